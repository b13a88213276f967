"""DTMF sent to a party: in-band tones (any channel) for peers that cannot carry
RFC 4733 events, e.g. a browser."""

from __future__ import annotations

import numpy as np

# ITU-T Q.23: (low, high) Hz for each key
KEYS: dict[str, tuple[int, int]] = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip
TONE_MS = 100
GAP_MS = 60


def valid_digits(digits: str) -> bool:
    return bool(digits) and all(d in KEYS for d in digits.upper())


def tones(digits: str, rate: int = 16000, level: float = 0.25) -> np.ndarray:
    """int16 audio of the keys, ``TONE_MS`` each with ``GAP_MS`` of silence after."""
    t = np.arange(rate * TONE_MS // 1000) / rate
    gap = np.zeros(rate * GAP_MS // 1000)
    parts = []
    for d in digits.upper():
        low, high = KEYS[d]
        parts += [level * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)), gap]
    return np.round(np.concatenate(parts) * 32767 / 2).astype(np.int16)
