"""Who hears whom while a supervisor is on a call: listen, whisper, barge.

Theory of operation
-------------------
A live call's parties are the caller, the agent, and any supervisors monitoring it.
Each supervisor chooses a mode; the mode decides which voices reach whom:

    mode      the supervisor hears     who hears the supervisor
    listen    caller and agent         nobody
    whisper   caller and agent         the agent (coaching the caller never hears)
    barge     caller and agent         caller and agent

Caller and agent hear each other in every mode, as in any bridge. ``HEARS`` is that
table, as (speaker, listener) pairs; ``hears`` reads it and applies the call's state:

* on hold the caller hears hold audio and is heard by nobody (the caller is out of
  the live mix); the agent's voice reaches nobody (held or muted, what an agent says is
  not part of the conversation, engine/calls.py), but a whispering supervisor still
  reaches the agent: coaching during a hold is what a hold is for;
* a muted agent is heard by nobody, supervisors included.

Supervisors do not hear one another: each supervisor's pairs involve only that
supervisor and the two parties.

Pure: the live side (engine/monitoring.py) asks, per decoded frame of a voice, whom
to send it to.
"""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["listen", "whisper", "barge"]
Party = Literal["caller", "agent", "supervisor"]
MODES: tuple[Mode, ...] = get_args(Mode)

BRIDGE: frozenset[tuple[Party, Party]] = frozenset({("caller", "agent"), ("agent", "caller")})
_SUPERVISOR_HEARS: frozenset[tuple[Party, Party]] = frozenset(
    {("caller", "supervisor"), ("agent", "supervisor")}
)
# (speaker, listener) pairs: who hears whom in each mode
HEARS: dict[Mode, frozenset[tuple[Party, Party]]] = {
    "listen": BRIDGE | _SUPERVISOR_HEARS,
    "whisper": BRIDGE | _SUPERVISOR_HEARS | {("supervisor", "agent")},
    "barge": BRIDGE | _SUPERVISOR_HEARS | {("supervisor", "agent"), ("supervisor", "caller")},
}


def hears(
    mode: Mode, speaker: Party, listener: Party, *, state: str, agent_muted: bool = False
) -> bool:
    """Whether ``listener`` hears ``speaker`` now, with a supervisor in ``mode`` on a
    call in ``state`` (engine/callstate.py)."""
    if (speaker, listener) not in HEARS[mode]:
        return False
    if speaker == "agent" and agent_muted:
        return False
    if state == "bridged":
        return True
    # held (or, between agents, queued): only the supervisor's coaching reaches the agent
    return state == "held" and speaker == "supervisor" and listener == "agent"
