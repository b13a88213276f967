"""Caller audio that never reached analysis, counted where it is lost.

Every 20 ms frame a caller sends is either analysed (``ccengine_frames_processed``) or
counted, as it is lost, with the reason (``ccengine_frames_lost{reason}``):

    reason      what happened                                          where
    gap         never arrived: lost on the network, or dropped by      media.webrtc.pump_audio
                the kernel because the engine did not read its         (timestamp gaps),
                socket in time; for phones, the frames concealed       media.rtp (concealment)
    late        arrived, but analysis was more than MAX_BEHIND s       media.webrtc.pump_audio
                behind real time: skipped to catch up
    queue       a phone call's inbound queue was full                  media.rtp.RtpInboundTrack
    recognizer  speech dropped because the leg's recognizer was        media.pipeline
                behind (its queue holds MAX_QUEUED_CHUNKS)

``late``, ``queue`` and ``recognizer`` are this node's own doing, and admission
(engine/capacity.py) refuses new calls while they exceed a fraction of the audio;
``gap`` mixes the network's losses with ours, and is only counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

LossReason = Literal["gap", "late", "queue", "recognizer"]
LOSS_REASONS: tuple[LossReason, ...] = ("gap", "late", "queue", "recognizer")
LOCAL_LOSSES: tuple[LossReason, ...] = ("late", "queue", "recognizer")
OnLost = Callable[[LossReason, int], None]  # (why, how many 20 ms frames)
FRAME_SECONDS = 0.02


def frames_in(seconds: float) -> int:
    """How many 20 ms frames ``seconds`` of audio are (at least one)."""
    return max(1, round(seconds / FRAME_SECONDS))
