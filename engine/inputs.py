"""Values from outside (request bodies, rule and queue files) are checked where they come
in, so that nothing stored can later fail to be served:

- text is valid Unicode. JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which
  Python strings hold but no UTF-8 encoder takes: a rule phrase stored with one made
  every later ``GET /escalation-rules`` answer 500, across restarts;
- numbers are finite. Python's JSON parser (and TOML) take ``Infinity`` and ``NaN``,
  which JSON cannot express on the way out: they came back as null.

Every model that takes input derives from ``Input``; a refusal names the field (422).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

SURROGATES = range(0xD800, 0xE000)


def lone_surrogate(value: object) -> bool:
    """Whether ``value`` (or a string anywhere inside it) holds a lone surrogate."""
    if isinstance(value, str):
        # the fast path: any surrogate makes the string unencodable
        return not value.isascii() and any(ord(c) in SURROGATES for c in value)
    if isinstance(value, dict):
        return any(lone_surrogate(k) or lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(lone_surrogate(v) for v in value)
    return False


class Input(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if lone_surrogate(value):
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)")
        return value
