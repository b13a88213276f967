"""A real Kamailio (Debian ``kamailio``) in front of engine processes: the SIP edge of
deploy/kamailio/kamailio.cfg, run as shipped with its parameters given by ``-A``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from tests.engine_proc import ROOT, end_process, free_port

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
CONFIG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"


def options(port: int, timeout: float = 1.0) -> int | None:
    """The status Kamailio answers an OPTIONS to itself with (None: no answer)."""
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
        s.settimeout(timeout)
        s.sendto(
            (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{call_id[:12]}\r\n"
                f"From: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\n"
                f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            data = s.recv(65535)
        except TimeoutError:
            return None
    return int(data.split(b" ", 2)[1])


class Kamailio:
    def __init__(
        self, workdir: Path, engines: list[str], *, ping: int = 1, fr_timer_ms: int = 2000
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.sip = f"127.0.0.1:{self.port}"
        self.engines = engines
        self.ping = ping
        self.fr_timer_ms = fr_timer_ms
        self.log = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    def start(self, timeout: float = 15) -> Kamailio:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listing = self.workdir / "dispatcher.list"
        listing.write_text("".join(f"1 sip:{e}\n" for e in self.engines))
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        cmd = [
            KAMAILIO, "-DD", "-E", "-f", str(CONFIG), "-m", "32", "-M", "4",
            "-P", str(run / "kamailio.pid"), "-Y", str(run), "-w", str(self.workdir),
            "-A", f"LISTEN=udp:127.0.0.1:{self.port}",
            "-A", f"LISTEN_TCP=tcp:127.0.0.1:{self.port}",
            "-A", f'DISPATCHER_LIST="{listing}"',
            "-A", f"DS_PING={self.ping}",
            "-A", f"FR_TIMER={self.fr_timer_ms}",
        ]  # fmt: skip
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"kamailio exited: {self.log.read_text()[-3000:]}")
            if options(self.port, 0.3) == 200:
                return self
        self.stop()
        raise RuntimeError(f"kamailio did not answer: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        end_process(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
