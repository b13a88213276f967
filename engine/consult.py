"""A consult: the agent on a call (the host) asks a colleague (the guest) first, or
someone outside the contact center (an outside number, dialled through the SIP trunk).

Theory of operation
-------------------
The host puts the caller on hold and rings the guest, whose desk shows the call so far
marked "consult from <host>"; a number is dialled instead (nothing is offered through
the ACD). A consult moves through:

    phase        event        -> next        what happens
    ringing      answer       -> consulting  host and guest talk; the caller is held
    ringing      decline      -> (over)      the host is told, and stays with the caller on hold
    ringing      no_answer    -> (over)      likewise (the ring timed out)
    ringing      failed       -> (over)      likewise (a number could not be reached)
    ringing      cancel       -> (over)      the host gave up before the guest answered
    ringing      host_left    -> (over)      the host's line dropped while a number rang:
                                             the dial is called off, the caller goes back into line
    consulting   complete     -> (over)      a transfer: the host leaves, the guest has the call
    consulting   conference   -> conference  caller, host and guest hear each other
    consulting   cancel       -> (over)      the guest leaves; the caller is back with the host
    consulting   guest_left   -> (over)      the guest left or hung up; the caller stays held
    consulting   host_left    -> (over)      the host's line dropped while consulting a number:
                                             it gets a BYE, the caller goes back into line
    conference   leave        -> (over)      one agent leaves; the other keeps the caller

``TRANSITIONS`` is that table (None: the consult is over). Who hears whom in each
phase is engine/conference.py. Pure: the engine (engine/consulting.py) keeps one
``Consult`` per call and does the media, the ringing and the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.callstate import NotAllowed
from engine.conference import Party
from engine.conference import Phase as Heard

ConsultPhase = Literal["ringing", "consulting", "conference"]
ConsultEvent = Literal[
    "answer", "decline", "no_answer", "failed", "cancel", "complete", "conference",
    "guest_left", "host_left", "leave",
]  # fmt: skip

TRANSITIONS: dict[tuple[ConsultPhase, ConsultEvent], ConsultPhase | None] = {
    ("ringing", "answer"): "consulting",
    ("ringing", "decline"): None,
    ("ringing", "no_answer"): None,
    ("ringing", "failed"): None,
    ("ringing", "cancel"): None,
    ("ringing", "host_left"): None,
    ("consulting", "complete"): None,
    ("consulting", "conference"): "conference",
    ("consulting", "cancel"): None,
    ("consulting", "guest_left"): None,
    ("consulting", "host_left"): None,
    ("conference", "leave"): None,
}

# what the host is told when they ask for something the phase does not allow
_WHY: dict[ConsultPhase, str] = {
    "ringing": "the consulted agent has not answered yet: wait, or cancel",
    "consulting": "you are consulting: complete the transfer, conference, or cancel",
    "conference": "the call is a conference: leave it to hand the caller over",
}


@dataclass
class Consult:
    """One call's consult: who, and how far it got. ``guest_leg``: the id of the
    guest's leg once they answered.

    An outside number is a guest with no user: ``guest_id`` None, ``guest`` the number
    as the host typed it. It is not masked in events: only staff read them (the
    caller's stream never carries a consult, engine/api/streams.py), the host typed it
    and must see a typo in "Calling ...", and ``call.transferred`` names a number
    transferred to in full already."""

    host_id: str
    host: str  # the host's username, for events and the guest's desk
    guest_id: str | None  # None: an outside number
    guest: str
    phase: ConsultPhase = "ringing"
    guest_leg: str | None = None
    rung: bool = False  # the guest's ring was offered (the hold comes before it)

    def next(self, event: ConsultEvent) -> ConsultPhase | None:
        """The phase after ``event`` (None: over); ``NotAllowed`` if not now."""
        try:
            return TRANSITIONS[(self.phase, event)]
        except KeyError:
            raise NotAllowed(_WHY[self.phase]) from None

    def move(self, event: ConsultEvent) -> ConsultPhase | None:
        after = self.next(event)
        if after is not None:
            self.phase = after
        return after

    @property
    def outside(self) -> bool:
        """The guest is an outside number, not one of our agents."""
        return self.guest_id is None

    @property
    def heard(self) -> Heard:
        """The phase of engine/conference.py's table."""
        return "none" if self.phase == "ringing" else self.phase

    def party(self, user_id: str | None) -> Party:
        """Which party an agent leg of ``user_id`` is: the guest, else the host (an
        outside number a call went to is in the host's place). An outside guest's leg
        is the call's only one without a user: the host who consults is always one of
        ours, and a number the call went to earlier has left it."""
        if self.phase == "ringing":
            return "host"
        if self.outside:
            return "guest" if user_id is None else "host"
        return "guest" if user_id == self.guest_id else "host"


def dial_failure(status: int) -> tuple[ConsultEvent, str]:
    """A number that did not answer (the SIP status of the dial's final answer): the
    consult's event, and the reason the host is told."""
    if status in (408, 480, 487):  # rang out, or nobody there to answer
        return "no_answer", "no_answer"
    if status in (486, 600):
        return "decline", "busy"
    if status == 603:
        return "decline", "declined"
    return "failed", "failed"


def may_start_outside(*, channel: str, state: str, consult: Consult | None) -> None:
    """``NotAllowed`` (409) with the reason no consult (with anyone) can start now."""
    if channel == "chat":
        raise NotAllowed("a chat cannot be consulted on: transfer it instead")
    if consult is not None:
        raise NotAllowed("you are already consulting on this call")
    if state not in ("bridged", "held"):
        raise NotAllowed(f"the call is not with you (it is {state})")


def may_start(
    *, channel: str, state: str, consult: Consult | None, guest_id: str | None,
    host_id: str | None, guest_presence: str,
) -> None:  # fmt: skip
    """``NotAllowed`` (409) with the reason a consult of a colleague cannot start now."""
    may_start_outside(channel=channel, state=state, consult=consult)
    if guest_id is None:
        raise NotAllowed("there is no such agent")
    if guest_id == host_id:
        raise NotAllowed("you cannot consult yourself")
    if guest_presence != "available":
        raise NotAllowed(f"that agent is not available (they are {guest_presence})")
