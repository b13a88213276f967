"""The child side of the recognition pool: one process serving many legs' recognizers.

Theory of operation
-------------------
The parent (``media.asr.pool``) starts ``python -m media.asr.worker FDS INDEX`` with one end
of a socket pair on each descriptor of the comma-separated ``FDS``: one *lane* each, served
by its own thread. The lanes of a process share its loaded models (one copy of the weights
in memory, however many lanes), and each lane serves as described below. Lanes are worth
it for backends that release the GIL while they decode (Moonshine: onnxruntime's ``run``);
for ones that hold it (pocketsphinx) the pool gives each process one lane.

Messages both ways use ``multiprocessing``'s connection framing (a 4-byte big-endian
signed length, ``-1`` meaning an 8-byte unsigned length follows, then that many bytes of
pickle). A lane reads one request, handles it, answers it, and only then reads the next:
requests are served strictly in order, one at a time, so the parent can match each answer
to the oldest request it sent on that lane.

A request is ``(request_id, op, leg_id, arg)``; the answer is ``(request_id, True, value)``
or ``(request_id, False, (kind, message))`` where ``kind`` is one of ``ErrorKind``.

====== ===================== ============== =============================================
op     arg                   value          what it does
====== ===================== ============== =============================================
load   ModelChoice           None           load that model's factory (and one recognizer)
open   (choice, phrases)     None           a new recognizer for the leg (loads if needed)
accept pcm bytes             str | None     ``Recognizer.accept``: the new partial, if any
peek   None                  AsrResult      ``Recognizer.peek``: decode so far, keep going
finish None                  AsrResult      ``Recognizer.finish``: end the utterance
close  None                  None           close the leg's recognizer (unknown leg: no-op)
====== ===================== ============== =============================================

Factories are cached by ``(backend, language, path)`` for the life of the process and
shared by its lanes (a model is loaded once, under a lock); each leg id has at most one
recognizer, in the lane that opened it.

Partials at bounded cost (``defer_partials``)
---------------------------------------------
Decoding a partial hypothesis after every 100 ms of audio is the costly part of ``accept``
for some backends. When other requests are already waiting behind an ``accept`` (the worker
is behind), the partial is worth less than catching up. So before each ``accept``, if the
leg's recognizer has a ``defer_partials`` attribute, the worker sets it to ``True`` when
more requests are queued on the pipe and ``False`` otherwise. A backend that honours it may
skip partial decoding and return ``None`` while the flag is set; its ``finish`` must still
decode everything. Backends without the attribute are not affected.

This module imports only ``media.asr`` (never ``engine``); thread-count variables such as
``OMP_NUM_THREADS=1`` are set by the parent before the interpreter starts, since one
worker per core is the unit of parallelism and a backend's own thread pool would fight
its neighbours for the same cores.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

from media import malloc
from media.asr.base import AsrResult, Recognizer, RecognizerFactory
from media.asr.models import ModelChoice, create_factory

log = logging.getLogger(__name__)

Op = Literal["load", "open", "accept", "peek", "finish", "close"]
ErrorKind = Literal["load", "recognizer", "request"]
Request = tuple[int, str, str, Any]
Reply = tuple[int, bool, Any]

# Bounds on one message each way: 4 MiB is two minutes of 16 kHz speech in one accept,
# far more than the pipeline's 100 ms chunks; answers are a line of text and its words.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_REPLY_BYTES = 1024 * 1024

FactoryKey = tuple[str, str, str]


class RequestError(Exception):
    """The parent asked for something this worker cannot do (a local bug, not a crash)."""


class ModelLoadFailed(Exception):
    """A model could not be loaded; the message names the model and the reason."""


def describe(choice: ModelChoice) -> str:
    return f"the {choice.backend} model for '{choice.language}' at {choice.path}"


class Factories:
    """Loaded models by ``(backend, language, path)``, shared by the lanes of a process."""

    def __init__(
        self, make_factory: Callable[[ModelChoice], RecognizerFactory | None] = create_factory
    ) -> None:
        self._make_factory = make_factory
        self._factories: dict[FactoryKey, RecognizerFactory] = {}
        # held while a model loads: two lanes asking for the same model at once must
        # not load (and hold) it twice
        self._lock = threading.Lock()

    def get(self, choice: ModelChoice) -> RecognizerFactory:
        if not isinstance(choice, ModelChoice):
            raise RequestError(f"not a ModelChoice: {choice!r}")
        if choice.backend is None or choice.path is None:
            raise ModelLoadFailed(f"no speech model for '{choice.language}'")
        key = (choice.backend, choice.language, choice.path)
        with self._lock:
            if (factory := self._factories.get(key)) is not None:
                return factory
            try:
                factory = self._make_factory(choice)
                if factory is None:
                    raise ValueError(f"unknown backend {choice.backend!r}")
                # factories load lazily: making (and pooling) one recognizer loads the model
                # now, so a bad model fails here and the first leg does not pay for the load
                factory.create().close()
            except Exception as exc:
                raise ModelLoadFailed(
                    f"cannot load {describe(choice)}: {type(exc).__name__}: {exc}"
                ) from exc
            self._factories[key] = factory
            malloc.trim()  # the model file and the load's scratch buffers: ~30 MB
            return factory


class RecognitionServer:
    """One lane's state: recognizers by leg, over the process's factories. Sans-IO:
    ``handle`` takes one request and whether more are waiting, and returns the answer."""

    def __init__(
        self,
        make_factory: Callable[[ModelChoice], RecognizerFactory | None] = create_factory,
        *,
        factories: Factories | None = None,
    ) -> None:
        self._factories = factories or Factories(make_factory)
        self._legs: dict[str, Recognizer] = {}

    @property
    def legs(self) -> list[str]:
        return list(self._legs)

    def handle(self, request: Request, waiting: bool) -> Reply:
        """Serve one request; ``waiting`` says more requests are queued behind it."""
        req_id = request[0] if isinstance(request, tuple) and request else -1
        try:
            req_id, op, leg_id, arg = request
            value = self._dispatch(op, leg_id, arg, waiting)
        except ModelLoadFailed as exc:
            return (req_id, False, ("load", str(exc)))
        except (RequestError, ValueError, TypeError) as exc:
            return (req_id, False, ("request", f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # the backend's own failure: report it, keep serving
            log.exception("recognizer failed")
            return (req_id, False, ("recognizer", f"{type(exc).__name__}: {exc}"))
        return (req_id, True, value)

    def _dispatch(self, op: str, leg_id: str, arg: Any, waiting: bool) -> Any:
        if op == "load":
            self._load(arg)
            return None
        if op == "open":
            choice, phrases = arg
            self._open(leg_id, choice, phrases)
            return None
        if op == "close":
            self._close(leg_id)
            return None
        rec = self._leg(leg_id)
        if op == "accept":
            return self._accept(rec, arg, waiting)
        if op == "peek":
            return self._peek(rec)
        if op == "finish":
            result = rec.finish()
            malloc.trim()  # the utterance's activations: see media.malloc
            return result
        raise RequestError(f"unknown op {op!r}")

    def _factory(self, choice: ModelChoice) -> RecognizerFactory:
        return self._factories.get(choice)

    def _load(self, choice: ModelChoice) -> None:
        self._factory(choice)

    def _open(self, leg_id: str, choice: ModelChoice, phrases: list[str] | None) -> None:
        factory = self._factory(choice)
        rec = factory.create(phrases)
        if (old := self._legs.pop(leg_id, None)) is not None:
            log.warning("leg %s opened again: its previous recognizer is closed", leg_id)
            old.close()
        self._legs[leg_id] = rec

    def _leg(self, leg_id: str) -> Recognizer:
        try:
            return self._legs[leg_id]
        except KeyError:
            raise RequestError(f"no recognizer open for leg {leg_id!r}") from None

    def _accept(self, rec: Recognizer, pcm: Any, waiting: bool) -> str | None:
        if not isinstance(pcm, bytes):
            raise RequestError(f"accept takes bytes, not {type(pcm).__name__}")
        if hasattr(rec, "defer_partials"):  # optional backend hook: see the module docstring
            setattr(rec, "defer_partials", waiting)  # noqa: B010 - not on the Recognizer type
        return rec.accept(pcm)

    def _peek(self, rec: Recognizer) -> AsrResult:
        peek: Callable[[], AsrResult] | None = getattr(rec, "peek", None)
        if peek is None:
            raise RequestError(f"{type(rec).__name__} cannot peek")
        return peek()

    def _close(self, leg_id: str) -> None:
        if (rec := self._legs.pop(leg_id, None)) is not None:
            rec.close()

    def close_all(self) -> None:
        for leg_id in list(self._legs):
            try:
                self._close(leg_id)
            except Exception:
                log.exception("closing leg %s", leg_id)


def _encode_reply(reply: Reply) -> bytes:
    data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_REPLY_BYTES:
        too_big = ("recognizer", f"answer of {len(data)} bytes exceeds {MAX_REPLY_BYTES}")
        data = pickle.dumps((reply[0], False, too_big), pickle.HIGHEST_PROTOCOL)
    return data


def serve(conn: Connection, server: RecognitionServer | None = None) -> None:
    """Answer requests in order until the parent closes its end."""
    server = server or RecognitionServer()
    try:
        while True:
            try:
                data = conn.recv_bytes(MAX_REQUEST_BYTES)
            except (EOFError, OSError):
                return  # the pool stopped or the parent is gone (or broke the framing)
            request = pickle.loads(data)
            # poll() is true when the next request has already arrived: we are behind
            reply = server.handle(request, waiting=conn.poll())
            try:
                conn.send_bytes(_encode_reply(reply))
            except (BrokenPipeError, ConnectionResetError):
                return
    finally:
        server.close_all()


LANE_FAILED = 70  # exit status when a lane's thread fails outside a recognizer


def _serve_lane(conn: Connection, server: RecognitionServer) -> None:
    try:
        serve(conn, server)
    except BaseException:
        # a bug in a lane: the process is the unit that fails and restarts, so it goes
        # now, rather than leave its parent to time the silent lane out
        log.exception("a recognition lane failed")
        os._exit(LANE_FAILED)


def serve_lanes(conns: list[Connection], factories: Factories | None = None) -> None:
    """Serve each connection on its own thread (the first on this one) until all close."""
    factories = factories or Factories()
    threads = [
        threading.Thread(
            target=_serve_lane, args=(conn, RecognitionServer(factories=factories)), daemon=True
        )
        for conn in conns[1:]
    ]
    for thread in threads:
        thread.start()
    serve(conns[0], RecognitionServer(factories=factories))
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fds, index = [int(fd) for fd in args[0].split(",")], args[1] if len(args) > 1 else "?"
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when
    # workers end (it closes the pipe), so a worker must not die first and be restarted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    malloc.limit_arenas()  # before the lanes' threads start: see media.malloc
    logging.basicConfig(
        level=logging.WARNING, format=f"asr-worker {index}: %(levelname)s %(name)s: %(message)s"
    )
    conns = [Connection(fd) for fd in fds]
    try:
        serve_lanes(conns)
    finally:
        for conn in conns:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
