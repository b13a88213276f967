"""The business app's customer tokens (engine/apptoken.py): a shared secret or a public
key verifies them, each refusal says why, and the known JWT attacks fail: alg "none",
an HMAC made with the public key as its secret, a token for someone else's audience, a
long-lived or oversized token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from engine.apptoken import AppTokens, TokenRejected

SECRET = "s3cret-shared-with-the-app-backend-" + "0123456789" * 3  # 64 bytes


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "u-1001", "aud": "ccengine", "iat": now, "exp": now + 300, **extra}


def public_pem(private: Any) -> str:
    data: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def rejected(tokens: AppTokens, token: str) -> str:
    with pytest.raises(TokenRejected) as refused:
        tokens.verify(token)
    return refused.value.reason


def test_a_shared_secret_verifies_hs_tokens() -> None:
    tokens = AppTokens(SECRET)
    for alg in ("HS256", "HS384", "HS512"):
        token = jwt.encode(
            claims(name="Ann Lee", phone_number="+1 (555) 010-2030", email="Ann@Example.com"),
            SECRET, algorithm=alg,
        )  # fmt: skip
        who = tokens.verify(token)
        assert (who.user_id, who.name, who.phone, who.email) == (
            "u-1001", "Ann Lee", "+15550102030", "ann@example.com",
        )  # fmt: skip
    bare = tokens.verify(jwt.encode(claims(), SECRET))
    assert (bare.name, bare.phone, bare.email) == (None, None, None)
    assert abs(bare.expires.timestamp() - time.time() - 300) < 5


def test_refusals_say_why() -> None:
    tokens = AppTokens(SECRET)
    past = int(time.time()) - 3600
    cases = {
        "token expired": jwt.encode(claims(exp=past), SECRET),
        "bad signature": jwt.encode(claims(), "another-secret-" + "x" * 49),
        "wrong audience (not 'ccengine')": jwt.encode(claims(aud="someone-else"), SECRET),
        "missing the 'exp' claim": jwt.encode(
            {k: v for k, v in claims().items() if k != "exp"}, SECRET
        ),
        "missing the 'sub' claim": jwt.encode(
            {k: v for k, v in claims().items() if k != "sub"}, SECRET
        ),
        "missing the 'aud' claim": jwt.encode(
            {k: v for k, v in claims().items() if k != "aud"}, SECRET
        ),
        "token lives too long: exp is more than 24 hours ahead": jwt.encode(
            claims(exp=int(time.time()) + 25 * 3600), SECRET
        ),
        "token too large (over 8192 bytes)": jwt.encode(claims(pad="x" * 8192), SECRET),
        "not a JWT": "not.a.jwt",
    }
    for reason, token in cases.items():
        assert rejected(tokens, token) == reason
    # a day ahead, no more, is fine; as is a clock 30 s off either way
    tokens.verify(jwt.encode(claims(exp=int(time.time()) + 24 * 3600), SECRET))
    tokens.verify(jwt.encode(claims(exp=int(time.time()) - 20), SECRET))
    assert "no customer token key" in rejected(AppTokens(None), jwt.encode(claims(), SECRET))


def test_alg_none_is_refused() -> None:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims())}."
    for key in (SECRET, public_pem(ec.generate_private_key(ec.SECP256R1()))):
        assert rejected(AppTokens(key), unsigned).startswith("algorithm 'none' is not accepted")


@pytest.mark.parametrize(
    ("private", "alg"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "PS512"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_a_public_key_verifies_its_own_family_only(private: Any, alg: str) -> None:
    pem = public_pem(private)
    tokens = AppTokens(pem)
    assert tokens.verify(jwt.encode(claims(), private, algorithm=alg)).user_id == "u-1001"
    # algorithm confusion: an HMAC whose secret is the public PEM, which anyone has
    confused = _hmac_token({"alg": "HS256", "typ": "JWT"}, claims(), pem.encode())
    assert rejected(tokens, confused).startswith("algorithm 'HS256' is not accepted")
    # signed by another key of the same kind
    assert rejected(tokens, jwt.encode(claims(), _another(private), algorithm=alg)) == (
        "bad signature"
    )


def _another(private: Any) -> Any:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(private.curve)
    if isinstance(private, rsa.RSAPrivateKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def _hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses a PEM as an HMAC secret."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = b64(hmac.new(secret, signing, hashlib.sha256).digest())
    return (signing + b"." + signature).decode()


def test_an_ec_key_of_another_curve_or_a_wrong_signer_is_refused() -> None:
    ours = ec.generate_private_key(ec.SECP256R1())
    tokens = AppTokens(public_pem(ours))
    theirs = ec.generate_private_key(ec.SECP256R1())
    assert rejected(tokens, jwt.encode(claims(), theirs, algorithm="ES256")) == "bad signature"
    p384 = ec.generate_private_key(ec.SECP384R1())
    token = jwt.encode(claims(), p384, algorithm="ES384")
    assert rejected(tokens, token) == "algorithm 'ES384' is not accepted with this key (only ES256)"


def test_unusable_keys_are_refused_at_start() -> None:
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="private key"):
        AppTokens(private.decode())
    with pytest.raises(ValueError, match="32 bytes"):
        AppTokens("short")
    # a secret of 32 bytes is long enough for HS256, not for HS384 nor HS512
    assert AppTokens("k" * 32).algorithms == ("HS256",)
    assert AppTokens("k" * 48).algorithms == ("HS256", "HS384")
    with pytest.raises(ValueError):
        AppTokens("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
