"""STIR/SHAKEN: what the carrier says about a phone caller's number, from the SIP
``Identity`` header (RFC 8224) carrying a SHAKEN PASSporT (RFC 8225, RFC 8588):

    Identity: eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1Ijoi...
      .eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjE1NTU1MTIxMyJdfSwiaWF0IjoxNDQzMjA4MzQ1...
      .<signature>;info=<https://cert.example.org/passport.cer>;alg=ES256;ppt=shaken

Attestation "A": the carrier knows its customer and that they may use the number; "B":
knows the customer, not the number; "C": neither (a gateway passed the call on).

The signature is NOT checked: that needs the certificate at ``x5u`` fetched over the
network, and its chain to a STI-CA trusted root, and the engine fetches nothing while a
call rings. ``signature_checked`` is always False here, so a level read from this header
is only as good as the path the call came over: believe it from a trunk in
CCENGINE_SIP_TRUNKS whose carrier verified it (an SBC that strips unverified ones), not
from anyone who can send us SIP. Treat it as one signal, never as verification.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from engine.customers import normalize_phone

MAX_HEADER = 8 * 1024  # bytes of an Identity header looked at; longer: None
MAX_DEST = 16  # destination numbers kept
LEVELS = ("A", "B", "C")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")

Level = Literal["A", "B", "C"]


@dataclass(frozen=True)
class Attestation:
    level: Level
    orig: str  # the calling number, as normalize_phone makes it
    dest: tuple[str, ...]  # the called numbers
    iat: datetime  # when the originating carrier signed it
    origid: str  # the carrier's opaque id of where the call entered its network
    x5u: str | None  # where the signing certificate is (not fetched)
    signature_checked: bool = False  # never True here: see the module's docstring


def _json_part(part: str) -> dict[str, Any] | None:
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


def parse_identity(header: str) -> Attestation | None:
    """The SHAKEN attestation in an Identity header's value; None for anything else
    (another PASSporT type, the compact form without its claims, a field missing or of
    the wrong type, more than MAX_HEADER bytes, garbage). Never raises."""
    try:
        return _parse(header)
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError, OSError):
        # binascii.Error, UnicodeDecodeError and json's errors are ValueErrors; a huge
        # iat is an OverflowError or OSError; a deeply nested claim a RecursionError
        return None


def _parse(header: str) -> Attestation | None:
    if not isinstance(header, str) or len(header.encode("utf-8", "replace")) > MAX_HEADER:
        return None
    token, *params = (p.strip() for p in header.strip().split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "ppt" and value.strip().strip('"') != "shaken":
            return None
    if not _COMPACT_JWS.fullmatch(token):
        return None
    head_part, claims_part, _signature = token.split(".")
    try:
        head, claims = _json_part(head_part), _json_part(claims_part)
    except binascii.Error:
        return None
    if head is None or claims is None or head.get("ppt") != "shaken":
        return None
    if head.get("typ", "passport") != "passport":
        return None
    level, iat, origid = claims.get("attest"), claims.get("iat"), claims.get("origid")
    orig, dest = claims.get("orig"), claims.get("dest")
    if level not in LEVELS or not isinstance(origid, str) or not 0 < len(origid) <= 256:
        return None
    if not isinstance(iat, int) or isinstance(iat, bool) or not isinstance(orig, dict):
        return None
    orig_tn = orig.get("tn")
    caller = normalize_phone(orig_tn) if isinstance(orig_tn, str) else None
    if caller is None:
        return None
    tns = dest.get("tn") if isinstance(dest, dict) else None
    if not isinstance(tns, list):
        tns = []
    called = (normalize_phone(tn) for tn in tns[:MAX_DEST] if isinstance(tn, str))
    x5u = head.get("x5u")
    return Attestation(
        level=level,
        orig=caller,
        dest=tuple(tn for tn in called if tn is not None),
        iat=datetime.fromtimestamp(iat, UTC),
        origid=origid,
        x5u=x5u if isinstance(x5u, str) and len(x5u) <= 2048 else None,
    )


def fresh(att: Attestation, now: datetime, max_age: float = 60.0) -> bool:
    """Whether it was signed within ``max_age`` seconds of ``now`` either way (RFC 8224
    §6.2.1 suggests 60 s): an older one may be a replay of another call's header."""
    return abs((now - att.iat).total_seconds()) <= max_age
