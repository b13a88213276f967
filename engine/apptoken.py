"""Customer tokens from the business's own app: a JWT its backend signs for a user who
is signed in there, handed to us with an in-app call or chat. A valid token verifies the
caller as that user (``sub``) without asking them anything.

The key (CCENGINE_CUSTOMER_TOKEN_KEY) is either a shared secret, and then only HS256,
HS384 and HS512 are accepted (each with a secret at least as long as its hash: 32, 48,
64 bytes), or a PEM public key (or certificate), and then only the
algorithms of its type: RS*/PS* for RSA, ES256/ES384/ES512 for its EC curve, EdDSA for
Ed25519/Ed448. "none" never is, nor an HMAC signed with the public key as its secret
(algorithm confusion: anyone holds the public key).

Required claims: ``sub`` (the app's user id), ``aud`` (ours, "ccengine" unless
configured), ``exp``, at most 24 hours ahead: a token lives in a phone app and travels
with every call, so one that lives for months would, once copied, verify whoever holds
it for months; the app's backend mints a fresh one per call instead. Optional: ``name``,
``phone_number``, ``email`` (OpenID Connect's names; ``phone`` is read too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from engine.customers import MAX_KEY, normalize_email, normalize_phone

MAX_TOKEN_BYTES = 8 * 1024
MAX_LIFETIME = 24 * 3600.0  # seconds from now to ``exp`` at most
# RFC 7518 §3.2: an HMAC key at least as long as the hash's output; a shorter shared
# secret only takes the algorithms it is long enough for
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_SECRET_BYTES = min(HMAC_ALGORITHMS.values())
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class TokenRejected(Exception):
    """The token does not verify anyone; ``reason`` says why (safe to log and show: it
    never holds the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AppIdentity:
    user_id: str
    name: str | None
    phone: str | None  # as normalize_phone makes it; None when absent or not a number
    email: str | None
    expires: datetime


PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def _public_key(pem: str) -> tuple[PublicKey, tuple[str, ...]]:
    """The key in a PEM public key or certificate, and the algorithms its type signs
    with. ValueError for a private key (the engine needs only the public one), or a
    type no JWT algorithm uses."""
    if "PRIVATE KEY-----" in pem:
        raise ValueError("customer_token_key holds a private key: give the public key only")
    data = pem.strip().encode()
    if "-----BEGIN CERTIFICATE" in pem:
        key: object = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = load_pem_public_key(data)
    if isinstance(key, rsa.RSAPublicKey):
        return key, RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"customer_token_key: EC curve {key.curve.name} has no JWT algorithm")
        return key, (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key, ("EdDSA",)
    raise ValueError(f"customer_token_key: a {type(key).__name__} signs no JWT algorithm")


def _text(claims: dict[str, Any], *names: str, limit: int = MAX_KEY) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:limit]
    return None


class AppTokens:
    """Checks the app's customer tokens with one key (see the module's docstring).
    ValueError at construction for a key that cannot be used."""

    def __init__(self, key: str | None, audience: str = "ccengine", leeway: float = 30) -> None:
        self.audience = audience
        self.leeway = leeway
        self._key: PublicKey | str | None = None
        self.algorithms: tuple[str, ...] = ()
        if not key:
            return
        if "-----BEGIN" in key:
            self._key, self.algorithms = _public_key(key)
        elif len(key.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"customer_token_key: a shared secret needs {MIN_SECRET_BYTES} "
                             "bytes at least")  # fmt: skip
        else:
            size = len(key.encode())
            self._key = key
            self.algorithms = tuple(a for a, n in HMAC_ALGORITHMS.items() if size >= n)

    @property
    def configured(self) -> bool:
        return self._key is not None

    def verify(self, token: str) -> AppIdentity:
        """Who the token says the caller is; TokenRejected with the reason otherwise."""
        if self._key is None:
            raise TokenRejected("no customer token key is configured (customer_token_key)")
        if len(token) > MAX_TOKEN_BYTES or len(token.encode()) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"token too large (over {MAX_TOKEN_BYTES} bytes)")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise TokenRejected("not a JWT") from None
        if alg not in self.algorithms:
            raise TokenRejected(f"algorithm {alg!r} is not accepted with this key "
                                f"(only {', '.join(self.algorithms)})")  # fmt: skip
        try:
            claims = jwt.decode(
                token, self._key, algorithms=list(self.algorithms), audience=self.audience,
                leeway=self.leeway, options={"require": ["exp", "sub", "aud"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad signature") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"wrong audience (not {self.audience!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"missing the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid token ({type(exc).__name__})") from None
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp - time.time() > MAX_LIFETIME + self.leeway:
            raise TokenRejected("token lives too long: exp is more than 24 hours ahead")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_KEY:
            raise TokenRejected(f"sub must be the user id, 1 to {MAX_KEY} characters")
        phone = _text(claims, "phone_number", "phone")
        email = _text(claims, "email")
        return AppIdentity(
            user_id=sub.strip(),
            name=_text(claims, "name", limit=200),
            phone=normalize_phone(phone) if phone else None,
            email=normalize_email(email) if email else None,
            expires=datetime.fromtimestamp(exp, UTC),
        )
