"""Who hears whom on a call with a consult or a three-way conference.

Theory of operation
-------------------
A call's parties are the caller, the *host* (the agent who has the call and started a
consult) and, during a consult, the *guest* (the colleague consulted). The consult's
phase (engine/consult.py) decides which voices reach whom:

    phase        who hears whom
    none         caller <-> host                 (a plain bridge; a guest still ringing)
    consulting   host <-> guest                  (the caller hears hold audio, no agent)
    conference   caller <-> host <-> guest       (everyone hears everyone)

``HEARS`` is that table, as (speaker, listener) pairs; ``hears`` reads it and applies
the call's state and mutes:

* while consulting, the caller is on hold: the call is ``held``, yet the two agents
  hear each other (that is what the consult is for);
* otherwise, as in any bridge, voices flow only while the call is ``bridged``;
* a muted party is heard by nobody.

Supervisors are not parties here: engine/monitor.py says what they hear.

Pure: the live side (engine/calls.py ``_analyse``) asks, per decoded frame of a leg,
whom to send it to.
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import permutations
from typing import Literal

Phase = Literal["none", "consulting", "conference"]
Party = Literal["caller", "host", "guest"]
PARTIES: tuple[Party, ...] = ("caller", "host", "guest")

# (speaker, listener) pairs: who hears whom in each phase
HEARS: dict[Phase, frozenset[tuple[Party, Party]]] = {
    "none": frozenset({("caller", "host"), ("host", "caller")}),
    "consulting": frozenset({("host", "guest"), ("guest", "host")}),
    "conference": frozenset(permutations(PARTIES, 2)),
}


def hears(
    phase: Phase, speaker: Party, listener: Party, *, state: str,
    muted: Collection[Party] = (),
) -> bool:  # fmt: skip
    """Whether ``listener`` hears ``speaker`` now, on a call in ``state``
    (engine/callstate.py) whose consult is in ``phase``."""
    if (speaker, listener) not in HEARS[phase] or speaker in muted:
        return False
    if phase == "consulting":
        return True  # the caller is held; the agents talk between themselves
    return state == "bridged"


def speaks(phase: Phase, party: Party, *, state: str, muted: Collection[Party] = ()) -> bool:
    """Whether what ``party`` says now is part of the conversation (heard by someone,
    so transcribed): an agent talking on hold, or muted, is not."""
    return any(hears(phase, party, other, state=state, muted=muted) for other in PARTIES)
