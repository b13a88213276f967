"""SIP Identity headers (engine/stirshaken.py): a SHAKEN PASSporT signed as a carrier
signs one (PyJWT, an EC P-256 key) reads back as its attestation; anything else is
None, and no input, however broken, raises."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stirshaken import MAX_HEADER, fresh, parse_identity

KEY = ec.generate_private_key(ec.SECP256R1())
X5U = "https://cert.example.org/passport.cer"
IAT = 1443208345  # RFC 8588's example
CLAIMS = {
    "attest": "A",
    "dest": {"tn": ["12155551213"]},
    "iat": IAT,
    "orig": {"tn": "12155551212"},
    "origid": "123e4567-e89b-12d3-a456-426655440000",
}


def passport(claims: dict[str, Any] | None = None, **header: Any) -> str:
    headers = {"ppt": "shaken", "typ": "passport", "x5u": X5U, **header}
    return jwt.encode(claims or CLAIMS, KEY, algorithm="ES256", headers=headers)


def identity(token: str, params: str = f";info=<{X5U}>;alg=ES256;ppt=shaken") -> str:
    return token + params


def b64(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_shaken_passport_reads_as_its_attestation() -> None:
    att = parse_identity(identity(passport()))
    assert att is not None
    assert (att.level, att.orig, att.dest, att.origid, att.x5u) == (
        "A", "12155551212", ("12155551213",), CLAIMS["origid"], X5U,
    )  # fmt: skip
    assert att.iat == datetime.fromtimestamp(IAT, UTC)
    assert att.signature_checked is False  # the certificate is never fetched
    # the header's parameters are optional, and their order free
    assert parse_identity(passport()) == att
    assert parse_identity(identity(passport(), ' ; ppt="shaken" ; info=<x>')) == att
    for level in ("B", "C"):
        graded = parse_identity(identity(passport({**CLAIMS, "attest": level})))
        assert graded is not None and graded.level == level
    # numbers as some carriers write them
    plus = parse_identity(passport({**CLAIMS, "orig": {"tn": "+12155551212"}}))
    assert plus is not None and plus.orig == "+12155551212"


def test_fresh_within_a_minute_either_way() -> None:
    att = parse_identity(passport())
    assert att is not None
    signed = datetime.fromtimestamp(IAT, UTC)
    assert fresh(att, signed + timedelta(seconds=60))
    assert fresh(att, signed - timedelta(seconds=59))
    assert not fresh(att, signed + timedelta(seconds=61))
    assert not fresh(att, signed - timedelta(seconds=61))
    assert fresh(att, signed + timedelta(seconds=200), max_age=300)


def test_other_passports_and_broken_claims_are_none() -> None:
    broken: list[str] = [
        identity(passport(), ";info=<x>;ppt=div"),  # another PASSporT extension
        passport(ppt="div"),
        passport(typ="JWT"),
        passport({**CLAIMS, "attest": "D"}),
        passport({**CLAIMS, "attest": "a"}),
        passport({**CLAIMS, "iat": "1443208345"}),
        passport({**CLAIMS, "iat": True}),
        passport({**CLAIMS, "iat": 10**30}),  # past any datetime
        passport({**CLAIMS, "orig": {"tn": "alice"}}),
        passport({**CLAIMS, "orig": "12155551212"}),
        passport({**CLAIMS, "origid": ""}),
        passport({**CLAIMS, "origid": 7}),
        f"{b64({'alg': 'ES256', 'ppt': 'shaken'})}..c2ln",  # the compact form: no claims
        f"{b64([1, 2])}.{b64(CLAIMS)}.c2ln",
        f"{b64({'ppt': 'shaken'})}.{b64(b'not json')}.c2ln",
        f"{b64({'ppt': 'shaken'})}.{b64('[' * 5000 + ']' * 5000)}.c2ln",
        f"{b64({'ppt': 'shaken'})}.{'A' * 5}.c2ln",  # not base64 of anything
        identity(passport()) + ";x=" + "y" * MAX_HEADER,
        "",
        ";;;",
        "a.b.c.d",
        "é.é.é",
    ]
    for missing in ("attest", "iat", "orig", "origid"):
        without = {k: v for k, v in CLAIMS.items() if k != missing}
        broken.append(passport(without))
    for header in broken:
        assert parse_identity(header) is None, header[:120]
    # no destination numbers (a URI only) is still an attestation of the caller
    uri_only = parse_identity(passport({**CLAIMS, "dest": {"uri": ["sip:x@y"]}}))
    assert uri_only is not None and uri_only.dest == ()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_garbage_never_raises(header: str) -> None:
    assert parse_identity(header) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={"attest": st.sampled_from(["A", "B", "C", "X"]) | JSON, "iat": JSON
                  | st.integers(), "orig": JSON | st.just({"tn": "12155551212"}),
                  "dest": JSON, "origid": JSON | st.text(max_size=300)},
    ),
    st.dictionaries(st.sampled_from(["ppt", "typ", "x5u", "alg"]), JSON | st.just("shaken")),
)  # fmt: skip
def test_passports_of_any_shape_never_raise(claims: dict[str, Any], head: dict[str, Any]) -> None:
    """Claims of every type in every field: a result, or None, and never an exception."""
    att = parse_identity(f"{b64(head)}.{b64(claims)}.c2ln")
    if att is not None:
        assert att.level in ("A", "B", "C") and att.signature_checked is False
