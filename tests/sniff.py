"""What a phone received: RTP packets to one UDP port on the loopback, captured with a
raw packet socket (needs root, as the test machines run; the test skips nothing: it
fails loudly if the socket cannot be opened)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np

from tests.sipp import decode_g711

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class RtpSniffer:
    def __init__(self, port: int, payload_type: int = 0) -> None:
        self.port = port
        self.payload_type = payload_type
        self.packets: dict[int, tuple[float, bytes]] = {}  # sequence -> (arrival, payload)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, meta = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if meta[2] == PACKET_OUTGOING:
                continue  # the loopback shows each packet twice
            if len(frame) < 14 + 20 + 8 + 12 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            udp = ip[ihl:]
            dport = struct.unpack("!H", udp[2:4])[0]
            if dport != self.port:
                continue
            rtp = udp[8:]
            if len(rtp) < 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != self.payload_type:
                continue
            seq = struct.unpack("!H", rtp[2:4])[0]
            self.packets[seq] = (time.monotonic(), rtp[12:])

    def close(self) -> None:
        """Stop capturing; ``packets`` holds what came."""
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def stop(self, since: float = 0.0) -> np.ndarray:
        """What arrived after ``since`` (time.monotonic()), in sequence order, decoded."""
        self.close()
        ordered = b"".join(
            self.packets[k][1] for k in sorted(self.packets) if self.packets[k][0] >= since
        )
        return decode_g711(ordered, self.payload_type)


def voiced_seconds(pcm: np.ndarray, rate: int = 8000, floor_dbfs: float = -40.0) -> float:
    """How much of ``pcm`` is louder than ``floor_dbfs`` (20 ms frames): speech reached
    the phone, whatever a recognizer makes of it."""
    n = rate // 50
    frames = pcm[: len(pcm) // n * n].reshape(-1, n).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1)) / 32768.0
    loud = rms > 10 ** (floor_dbfs / 20)
    return float(loud.sum()) / 50
