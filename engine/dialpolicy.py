"""Which numbers this engine dials through the SIP trunk for people (toll fraud).

Any agent on a call may consult or transfer to a number, and the desk's dial pad places
calls: without a policy, anyone signed in can run up a premium-rate or international bill,
or send the carrier a feature code (``*72…``, call forwarding on the trunk itself).
``CCENGINE_SIP_DIAL_PREFIXES`` lists the prefixes a dialled number must start with (the
number as sent to the trunk, e.g. ``+1``, ``+44``); empty: any number, as before.

``*`` and ``#`` are keys, not part of a number someone joins a call from: a consult's or
a transfer's number may not carry them (they are pressed on the call's keypad once the
other side answers, engine/api/desk.py ``/dtmf``). The dial pad's own calls may (a PBX
menu after the number, ``+1555…*1``), as long as the prefixes allow them: a number that
starts with a key (a carrier's ``*67``) only with no prefixes set. ``sip:`` URIs are not
numbers: CCENGINE_SIP_DIAL_DOMAINS decides those (engine/sip.py), so a domain listed there
must not lead to the public phone network, or the prefixes are passed by.

A callback's number is the customer's (``phone_number``): digits only, no keys, and any
way people write one for reading (spaces, no-break spaces, ( ) . - /) dialled without.

Pure: the engine asks before anyone is put on hold or dialled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.callstate import NotAllowed

KEYS = "*#"
# what people write inside a phone number for reading it, not for dialling it (RFC 3966's
# visual separators, and /); any whitespace too (a pasted number's no-break spaces)
SEPARATORS = str.maketrans("", "", "().-/")
NUMBER = re.compile(r"\+?[0-9]{6,15}")  # E.164's 15 digits at most; ASCII digits only


def dialable(text: str) -> str:
    """A number as written ("+1 (555) 010-2030") as dialled ("+15550102030")."""
    return "".join(text.split()).translate(SEPARATORS)


def phone_number(text: str) -> str | None:
    """``text`` as a number to call someone back on, or None if it is not one: no keys
    (``*72…`` is a carrier's feature code, not a customer's number), digits only."""
    number = dialable(text)
    return number if NUMBER.fullmatch(number) else None


def check_number(number: str, prefixes: Sequence[str], *, keys: bool) -> None:
    """``NotAllowed`` (409) if ``number`` (through the trunk) may not be dialled:
    ``keys``: whether ``*`` and ``#`` may be in it (the dial pad's own calls)."""
    if not keys and any(c in KEYS for c in number):
        raise NotAllowed(
            f"the number {number} has * or #: dial the number alone, and press the keys "
            "on the call's keypad once they answer"
        )
    if prefixes and not any(number.startswith(p) for p in prefixes):
        raise NotAllowed(f"the number {number} is not allowed (CCENGINE_SIP_DIAL_PREFIXES)")
