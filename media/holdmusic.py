"""Hold audio made here, not downloaded: a slow, quiet arpeggio that loops seamlessly.

Soft sine tones with a raised-cosine envelope, about -24 dBFS, so it never
startles and a caller can tell the line is alive. Each note fades to zero before
the next, so the loop has no click where it wraps.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from media.wavtrack import SEND_RATE

# C major 7 and A minor 7, up and down: calm and unobtrusive
NOTES_HZ = (261.63, 329.63, 392.00, 493.88, 440.00, 392.00, 329.63, 220.00)
NOTE_SECONDS = 0.6
LEVEL = 0.06  # peak, of full scale


@cache
def hold_loop(rate: int = SEND_RATE) -> np.ndarray:
    """One loop of hold audio at ``rate``, int16 mono."""
    n = int(NOTE_SECONDS * rate)
    t = np.arange(n) / rate
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    notes = [
        envelope * (np.sin(2 * np.pi * f * t) + 0.25 * np.sin(4 * np.pi * f * t)) / 1.25
        for f in NOTES_HZ
    ]
    loop = (np.concatenate(notes) * LEVEL * 32767).astype(np.int16)
    loop.flags.writeable = False  # cached and shared by every call on hold
    return loop
