from pathlib import Path

import pytest

from engine.users import (
    AuthError,
    Identity,
    hash_password,
    issue_token,
    load_or_create_key,
    read_token,
    verify_password,
)

KEY = "k" * 48


def test_passwords() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "wrong horse")
    assert not verify_password(None, "correct horse")  # unknown user
    assert not verify_password("not a hash", "x")
    with pytest.raises(ValueError, match="8 characters"):
        hash_password("short")


def test_tokens() -> None:
    ann = Identity("u1", "ann", "agent")
    assert read_token(issue_token(ann, KEY, 60), KEY) == ann
    with pytest.raises(AuthError, match="expired"):
        read_token(issue_token(ann, KEY, 60, now=1000), KEY)
    with pytest.raises(AuthError, match="invalid token"):
        read_token(issue_token(ann, KEY, 60), "another key" * 4)
    with pytest.raises(AuthError, match="invalid token"):
        read_token("garbage", KEY)


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    key = load_or_create_key(path)
    assert len(key) >= 48 and load_or_create_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
