"""Untrusted images are decoded in a small pool of separate processes with memory and CPU limits.

A near-limit image (a 6,300 x 6,300 PNG of 113 KB) costs hundreds of MB and seconds of CPU to decode, and
the decoders are C code parsing hostile bytes. In the web process, sixteen of them at once took ~1 GB each
(issue 7 item 8). Here each web process owns a pool of ``IMAGE_DECODE_WORKERS`` (default 2) long-lived decoder
processes, started lazily on the first upload, so a flood of costly images waits for a decoder instead of
taking the web worker's memory (UP-05):

- Each decoder caps its own address space (``RLIMIT_AS``, ``IMAGE_DECODE_MEMORY_MB``), its CPU time per image
  (``RLIMIT_CPU``, moved forward before each job by ``IMAGE_DECODE_CPU_SECONDS``), forbids itself any file
  write (``RLIMIT_FSIZE`` 0: plaintext never reaches a disk) and core dumps. A decoder that runs out of memory
  answers 422 ``image_too_large`` and exits; one that is killed by its CPU limit, or outlives the wall-clock
  ``IMAGE_DECODE_TIMEOUT_SECONDS`` (then the pool kills it), also gives 422 ``image_too_large``; one that dies
  any other way gives 422 ``image_invalid``. The pool replaces it and carries on.
- When every decoder is busy an upload waits up to ``IMAGE_DECODE_WAIT_SECONDS``, then gets 503
  ``service_unavailable`` with ``Retry-After``.
- Bytes in, re-encoded bytes out, over a pipe; nothing is pickled from a decoder (a decoder parses hostile
  input, so what it sends back is read as JSON and raw bytes only, and the hash is computed here).

Processes come from multiprocessing's ``forkserver`` context, with ``marketplace.imagepool`` preloaded there:
a decoder starts (or is replaced) with a fork of that small clean server, not of a threaded web worker, and
without re-importing Pillow. The pool belongs to the process that created it; a process forked from it (a
gunicorn worker of a preloading master, an rq work-horse) notices the new pid and builds its own pool.

``IMAGE_DECODE_MODE=inline`` decodes in the calling process instead (unit tests that spy on Pillow, and the
benchmark's baseline); the default, and what the test suite runs, is the pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, Protocol

from flask import Flask, current_app, has_app_context

from marketplace import images
from marketplace.errors import AppError, ServiceUnavailable
from marketplace.images import ImageInvalid, ImagePolicy, ImageTooLarge, ProcessedImage

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_HEADER_MAX = 64 * 1024
_OUTPUT_MAX = 64 * MIB
# A decoder is recycled after this many images, so heap fragmentation cannot creep up to the memory cap.
JOBS_PER_DECODER = 200
_LIMIT_SIGNALS = {-signal.SIGKILL, -signal.SIGXCPU}


class DecodersBusy(ServiceUnavailable):
    message = "Images are being processed for other uploads. Try again shortly."


class Decoder(Protocol):
    def run(self, data: bytes, fmt: str, policy: ImagePolicy) -> ProcessedImage: ...


class InlineDecoder:
    """Decodes in the calling process (``IMAGE_DECODE_MODE=inline``)."""

    def run(self, data: bytes, fmt: str, policy: ImagePolicy) -> ProcessedImage:
        return images.transform(data, fmt, policy)


@dataclass
class PoolStats:
    started: int = 0  # decoder processes started (first use and replacements)
    replaced: int = 0  # decoders killed at a limit or timeout, or found dead
    completed: int = 0  # images a decoder answered (accepted or refused)
    busy: int = 0  # decoders working right now
    peak_busy: int = 0  # the most that ever worked at once
    saturated: int = 0  # uploads turned away with 503 after waiting


class _DecoderDied(Exception):
    def __init__(self, exitcode: int | None, *, before_job: bool = False) -> None:
        super().__init__(exitcode)
        self.exitcode = exitcode
        self.before_job = before_job


class _Worker:
    def __init__(self, ctx: Any, memory_bytes: int, cpu_seconds: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_decoder_main, args=(child, memory_bytes, cpu_seconds),
                                   name="image-decoder", daemon=True)
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.jobs = 0
        self.dead = False

    def call(self, data: bytes, fmt: str, policy: ImagePolicy, timeout: float) -> ProcessedImage:
        header = {"fmt": fmt, "policy": dataclasses.asdict(policy)}
        try:
            self.conn.send_bytes(json.dumps(header).encode())
            self.conn.send_bytes(data)
        except OSError as exc:  # it died while idle (an OOM kill, an operator): not this image's doing
            raise _DecoderDied(self._exitcode(), before_job=True) from exc
        self.jobs += 1
        if not self.conn.poll(timeout):
            self.kill()
            raise ImageTooLarge(details={"reason": "decode_timeout"})
        try:
            answer = json.loads(self.conn.recv_bytes(_HEADER_MAX))
            output = self.conn.recv_bytes(_OUTPUT_MAX) if answer.get("ok") is True else b""
        except (EOFError, OSError, ValueError) as exc:
            raise _DecoderDied(self._exitcode()) from exc
        if answer.get("retire"):
            self.kill()
        if answer.get("ok") is not True:
            raise _refusal(answer)
        return _checked_result(answer, output, policy)

    def _exitcode(self) -> int | None:
        if self.dead:
            return None
        self.process.join(2)
        return self.process.exitcode

    def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        with contextlib.suppress(Exception):
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
            self.process.close()  # its sentinel pipe, or every replaced decoder would leak a descriptor
        with contextlib.suppress(Exception):
            self.conn.close()

    @property
    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()


def _refusal(answer: dict[str, Any]) -> AppError:
    details = answer.get("details")
    if not isinstance(details, dict) or len(json.dumps(details)) > 2048:
        details = {}
    error: type[AppError] = {
        "image_too_large": ImageTooLarge,
        "unsupported_media_type": images.ImageTypeUnsupported,
    }.get(str(answer.get("code")), ImageInvalid)
    return error(details=details)


def _checked_result(answer: dict[str, Any], output: bytes, policy: ImagePolicy) -> ProcessedImage:
    width, height = answer.get("width"), answer.get("height")
    if (
        not isinstance(width, int) or not isinstance(height, int)
        or not 0 < max(width, height) <= policy.output_max_side or min(width, height) < 1
        or not output.startswith(b"\xff\xd8\xff")
    ):
        log.error("image decoder sent a malformed answer", extra={"event": {"alert": "image_decoder"}})
        raise ImageInvalid(details={"reason": "decoder_failed"})
    return ProcessedImage(data=output, mime=images.OUTPUT_MIME, width=width, height=height,
                          sha256=hashlib.sha256(output).hexdigest())


class DecoderPool:
    """A bounded pool of decoder processes; safe to share between the threads of one process."""

    def __init__(self, *, size: int = 2, memory_mb: int = 1024, cpu_seconds: int = 10, timeout: float = 20,
                 wait: float = 10) -> None:
        if min(size, memory_mb, cpu_seconds) < 1 or timeout <= 0 or wait < 0:
            raise ValueError("pool limits must be positive")
        self.size = size
        self.memory_bytes = memory_mb * MIB
        self.cpu_seconds = cpu_seconds
        self.timeout = timeout
        self.wait = wait
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.size)
        self._idle: list[_Worker] = []
        self.stats = PoolStats()

    def __repr__(self) -> str:
        return f"DecoderPool(size={self.size}, memory_mb={self.memory_bytes // MIB})"

    def run(self, data: bytes, fmt: str, policy: ImagePolicy) -> ProcessedImage:
        if self._pid != os.getpid():  # forked: the decoders and their pipes belong to the parent
            self._reset()
        if not self._slots.acquire(timeout=self.wait):
            with self._lock:
                self.stats.saturated += 1
            log.warning("image decoders saturated", extra={"event": {"pool_size": self.size}})
            raise DecodersBusy(headers={"Retry-After": str(max(1, round(self.wait)))},
                               details={"reason": "image_decoders_busy"})
        try:
            with self._lock:
                self.stats.busy += 1
                self.stats.peak_busy = max(self.stats.peak_busy, self.stats.busy)
            return self._run_on_a_decoder(data, fmt, policy)
        finally:
            with self._lock:
                self.stats.busy -= 1
            self._slots.release()

    def _run_on_a_decoder(self, data: bytes, fmt: str, policy: ImagePolicy) -> ProcessedImage:
        for attempt in (1, 2):
            worker = self._take()
            try:
                result = worker.call(data, fmt, policy, self.timeout)
            except _DecoderDied as died:
                self._replaced(worker)
                if died.before_job and attempt == 1:
                    continue  # a decoder that was already dead never saw this image: use a fresh one
                code = died.exitcode
                log.warning("image decoder died", extra={"event": {"exitcode": code}})
                if code in _LIMIT_SIGNALS:
                    raise ImageTooLarge(details={"reason": "decoder_limit"}) from None
                raise ImageInvalid(details={"reason": "decoder_failed"}) from None
            except AppError:
                self._finished(worker)
                raise
            self._finished(worker)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                self.stats.replaced += 1
                worker.kill()
            self.stats.started += 1
        return _Worker(_context(), self.memory_bytes, self.cpu_seconds)

    def _finished(self, worker: _Worker) -> None:
        with self._lock:
            self.stats.completed += 1
            if worker.alive and worker.jobs < JOBS_PER_DECODER:
                self._idle.append(worker)
                return
            if not worker.alive:
                self.stats.replaced += 1
        worker.kill()

    def _replaced(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self.stats.replaced += 1

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


# ---- the decoder process -------------------------------------------------------------------------------


def _decoder_main(conn: Connection, memory_bytes: int, cpu_seconds: int) -> None:
    """Runs in the decoder process: apply the limits, then answer one image at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is for the server, not for us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file can be written: plaintext stays in memory
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    _keep_freed_memory()
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            header = json.loads(conn.recv_bytes(_HEADER_MAX))
            data = conn.recv_bytes(images.MIB * 64)
        except (EOFError, OSError):
            return  # the web process is gone
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + cpu_seconds + 1
        if cpu_hard == resource.RLIM_INFINITY or soft < cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        answer, output = _decode_one(header, data)
        del data
        try:
            conn.send_bytes(json.dumps(answer).encode())
            if answer.get("ok"):
                conn.send_bytes(output)
        except (EOFError, OSError):
            return
        if answer.get("retire"):
            return


def _keep_freed_memory() -> None:
    """Let glibc reuse freed decode buffers instead of returning them to the kernel after every image: a
    fresh process otherwise maps (and page-faults) ~18 MB anew for each 12 MP photo, ~14 ms of the pool's
    overhead (measured with bench/bench_image_pool.py). Kept memory still counts against RLIMIT_AS."""
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        libc.mallopt(m_mmap_threshold, 64 * MIB)
        libc.mallopt(m_trim_threshold, 128 * MIB)
    except (OSError, AttributeError):  # not glibc: the defaults are slower, not wrong
        return


def _decode_one(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    try:
        fields = dict(header["policy"])
        fields["allowed_formats"] = tuple(fields["allowed_formats"])
        result = images.transform(data, str(header["fmt"]), ImagePolicy(**fields))
    except MemoryError:
        # the heap may be in pieces after this: answer, then let the pool start a fresh decoder
        return {"ok": False, "code": "image_too_large", "details": {"reason": "decoder_limit"}, "retire": True}, b""
    except AppError as exc:
        # the pipeline turns a MemoryError into image_too_large; the decoder retires after one all the same
        retire = isinstance(exc.__cause__, MemoryError)
        return {"ok": False, "code": exc.code, "details": exc.details, "retire": retire}, b""
    except Exception:
        return {"ok": False, "code": "image_invalid", "details": {"reason": "corrupt"}, "retire": True}, b""
    return {"ok": True, "width": result.width, "height": result.height}, result.data


# ---- which decoder a call uses -----------------------------------------------------------------------------

_context_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    global _ctx  # noqa: PLW0603 - one forkserver per process
    with _context_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["marketplace.imagepool"])
            _ctx = ctx
        return _ctx


def _after_fork_in_child() -> None:
    """A forked process (an rq work-horse, a worker of a preloading gunicorn master) inherits the parent's
    forkserver handle, but that server is the parent's child: ``ensure_running`` would ``waitpid`` a process
    it cannot wait for. Forget it (and any lock a parent thread held at the fork) so a new one is started."""
    global _context_lock, _pools_lock  # noqa: PLW0603 - see above
    _context_lock = threading.Lock()
    _pools_lock = threading.Lock()
    try:
        server: Any = forkserver._forkserver
        server._lock = threading.Lock()
        if server._forkserver_pid is not None:
            if server._forkserver_alive_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(server._forkserver_alive_fd)
            server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
    except Exception:  # pragma: no cover - a Python whose forkserver has other internals
        log.warning("could not reset the inherited forkserver", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)


_overrides: list[Decoder] = []
_pools: dict[tuple[int, int, int, float, float], DecoderPool] = {}
_pools_lock = threading.Lock()


def pool_for(*, size: int, memory_mb: int, cpu_seconds: int, timeout: float, wait: float) -> DecoderPool:
    """One pool per set of limits and process (apps built with the same settings share their decoders)."""
    key = (size, memory_mb, cpu_seconds, timeout, wait)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = DecoderPool(size=size, memory_mb=memory_mb, cpu_seconds=cpu_seconds,
                                             timeout=timeout, wait=wait)
        return pool


def init_app(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    decoder: Decoder
    if settings.image_decode_mode == "inline":
        decoder = InlineDecoder()
    else:
        decoder = pool_for(size=settings.image_decode_workers, memory_mb=settings.image_decode_memory_mb,
                           cpu_seconds=settings.image_decode_cpu_seconds,
                           timeout=settings.image_decode_timeout_seconds, wait=settings.image_decode_wait_seconds)
    app.extensions["image_decoder"] = decoder


def current_decoder() -> Decoder:
    """The decoder for this call: a ``use_decoder`` override, else the app's, else the default pool."""
    if _overrides:
        return _overrides[-1]
    if has_app_context():
        decoder: Decoder | None = current_app.extensions.get("image_decoder")
        if decoder is not None:
            return decoder
    return pool_for(size=2, memory_mb=1024, cpu_seconds=10, timeout=20, wait=10)


@contextlib.contextmanager
def use_decoder(decoder: Decoder) -> Iterator[Decoder]:
    """Route every ``process_image`` in this process through ``decoder`` (tests and benchmarks)."""
    _overrides.append(decoder)
    try:
        yield decoder
    finally:
        _overrides.remove(decoder)


def wait_idle(pool: DecoderPool, timeout: float = 10) -> None:
    """Block until no decoder of ``pool`` is working (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while pool.stats.busy and time.monotonic() < deadline:
        time.sleep(0.01)
