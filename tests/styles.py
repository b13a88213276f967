"""The two ways a recognizer writes what a caller said, as test parameters.

pocketsphinx writes lower case, no punctuation, numbers as words ("my order number is
eight three zero one six"); a neural recognizer (Moonshine) writes like a person ("My
order number is 83016."). ``both`` turns one case into two test parameters, one per style,
that must give the same answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet


def both(sphinx: str, moonshine: str, *expected: Any) -> list[ParameterSet]:
    return [
        pytest.param(sphinx, *expected, id=f"sphinx: {sphinx}"),
        pytest.param(moonshine, *expected, id=f"moonshine: {moonshine}"),
    ]


def cases(*pairs: tuple[Any, ...]) -> list[ParameterSet]:
    """``both`` for each ``(sphinx, moonshine, *expected)``."""
    return [p for pair in pairs for p in both(*pair)]
