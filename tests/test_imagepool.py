"""Images are decoded in a bounded pool of separate processes with memory, CPU and time limits (issue 7
item 8, UP-05): a decoder that hits its limit is killed or retires, the upload gets 422, and the pool goes on
with a fresh decoder; a saturated pool answers 503 with Retry-After; concurrent heavy uploads never run more
decoders than the pool has. Everything here runs real decoder processes (no mocks).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import func, select

from marketplace import imagepool
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.imagepool import DecoderPool, DecodersBusy, InlineDecoder, use_decoder
from marketplace.images import DOCUMENT_POLICY, SELFIE_POLICY, ImageInvalid, ImageTooLarge, process_image
from marketplace.vault.models import Blob
from tests.factories import auth_headers, make_customer
from tests.kyc.helpers import photo, upload

MIB = 1024 * 1024


@cache
def near_limit_png() -> bytes:
    """39.7 Mpx of RGBA in ~170 KB: legal under every policy, and ~330 MB of pixels once decoded."""
    out = io.BytesIO()
    Image.new("RGBA", (6300, 6300), (200, 10, 10, 128)).save(out, "PNG")
    return out.getvalue()


@cache
def heavy_png() -> bytes:
    """A 3000 x 3000 PNG: a fraction of a second to decode, enough for several to overlap."""
    out = io.BytesIO()
    Image.new("RGB", (3000, 3000), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def _run(data: bytes, policy: Any = DOCUMENT_POLICY) -> Any:
    return process_image(io.BytesIO(data), policy=policy)


@pytest.fixture
def small_pool() -> Iterator[DecoderPool]:
    pool = DecoderPool(size=1, memory_mb=1024, cpu_seconds=10, timeout=20, wait=10)
    try:
        yield pool
    finally:
        pool.close()


def test_the_app_decodes_in_the_pool_by_default(app: Flask, client: Any) -> None:  # UP-05
    decoder = app.extensions["image_decoder"]
    assert isinstance(decoder, DecoderPool)
    assert decoder.size == app.config["SETTINGS"].image_decode_workers == 2
    with app.app_context():
        headers = auth_headers(client, make_customer())
    before = decoder.stats.completed
    assert upload(client, headers, "id_front").status_code == 201
    assert decoder.stats.completed == before + 1


def test_inline_decoding_is_a_setting(app_overrides: dict[str, Any]) -> None:
    from marketplace import create_app

    inline = create_app({**app_overrides, "IMAGE_DECODE_MODE": "inline"}, start_background=False)
    assert isinstance(inline.extensions["image_decoder"], InlineDecoder)


def test_a_decode_over_the_memory_cap_is_refused_and_the_decoder_recovers(app: Flask, client: Any) -> None:
    # UP-05: "a decoder that hits its limit is killed and the request gets 422"
    with app.app_context():
        person = make_customer()
        headers = auth_headers(client, person)
    pool = DecoderPool(size=1, memory_mb=300)  # the decoder's baseline fits; 330 MB of pixels does not
    try:
        with use_decoder(pool):
            assert upload(client, headers, "id_front").status_code == 201  # ordinary uploads are fine
            refused = upload(client, headers, "id_back", near_limit_png(), content_type="image/png")
            assert refused.status_code == 422, refused.get_json()
            assert refused.get_json()["error"]["code"] == "image_too_large"
            assert pool.stats.replaced == 1  # the decoder that ran out of memory is gone
            again = upload(client, headers, "id_back")
            assert again.status_code == 201, again.get_json()
        assert (pool.stats.started, pool.stats.completed) == (2, 3)
        with app.app_context():  # nothing was stored for the refused upload
            assert db.session.execute(
                select(func.count()).select_from(Blob).where(Blob.user_id == person.user_id)
            ).scalar_one() == 2
        # the same image is accepted by a decoder with the default cap: the limit, not the image, refused it
        default = DecoderPool(size=1)
        try:
            with use_decoder(default):
                assert _run(near_limit_png()).width == DOCUMENT_POLICY.output_max_side
        finally:
            default.close()
    finally:
        pool.close()


def test_decoder_processes_carry_the_limits(small_pool: DecoderPool) -> None:  # UP-05
    with use_decoder(small_pool):
        _run(photo())
    [worker] = small_pool._idle
    limits = _proc_limits(worker.process.pid)
    assert limits["Max address space"] == str(1024 * MIB)
    assert limits["Max file size"] == "0"  # it cannot write plaintext (or anything) to a file
    assert limits["Max core file size"] == "0"
    assert limits["Max cpu time"] != "unlimited" and int(limits["Max cpu time"]) <= 10 + 2 + 60
    assert worker.process.pid != os.getpid()


def _proc_limits(pid: int) -> dict[str, str]:
    limits = {}
    with open(f"/proc/{pid}/limits") as handle:
        next(handle)
        for line in handle:
            name, soft = line[:26].strip(), line[26:47].strip()
            limits[name] = soft
    return limits


def test_a_decode_past_the_timeout_is_killed_and_refused(small_pool: DecoderPool) -> None:  # UP-05
    with use_decoder(small_pool):
        _run(photo())  # a warm decoder, so the timeout below measures the decode alone
        small_pool.timeout = 0.01
        with pytest.raises(ImageTooLarge) as caught:
            _run(near_limit_png())
        assert (caught.value.status, caught.value.details) == (422, {"reason": "decode_timeout"})
        small_pool.timeout = 20
        assert _run(photo()).width == 1080
    assert small_pool.stats.replaced == 1 and small_pool.stats.started == 2


def test_a_decoder_killed_mid_image_gives_422(small_pool: DecoderPool) -> None:  # UP-05
    with use_decoder(small_pool):
        _run(photo())
        [worker] = small_pool._idle
        killer = threading.Timer(0.2, os.kill, (worker.process.pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(ImageTooLarge) as caught:  # SIGKILL is what an OOM killer or a limit sends
            _run(near_limit_png())
        killer.join()
        assert caught.value.details == {"reason": "decoder_limit"}
        assert _run(photo()).width == 1080


def test_a_decoder_that_died_while_idle_is_replaced_without_failing_the_upload(small_pool: DecoderPool) -> None:
    with use_decoder(small_pool):
        _run(photo())
        [worker] = small_pool._idle
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(5)
        assert _run(photo()).width == 1080
    assert small_pool.stats.replaced == 1


def test_refusals_from_a_decoder_keep_their_codes(small_pool: DecoderPool) -> None:  # UP-05
    truncated = photo()[:2000]
    with use_decoder(small_pool), pytest.raises(ImageInvalid) as caught:
        _run(truncated)
    assert (caught.value.status, caught.value.code) == (422, "image_invalid")
    assert caught.value.details == {"reason": "corrupt"}
    assert small_pool.stats.replaced == 0  # an ordinary refusal does not cost a decoder


def test_concurrent_heavy_uploads_never_run_more_decoders_than_the_pool_has() -> None:  # issue 7 item 8
    pool = DecoderPool(size=2, wait=120)
    results: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def one() -> None:
        start.wait()
        try:
            outcome: Any = _run(heavy_png()).width
        except AppError as exc:
            outcome = exc.code
        with lock:
            results.append(outcome)

    try:
        with use_decoder(pool):
            threads = [threading.Thread(target=one) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(180)
        assert results == [2000] * 6
        assert pool.stats.peak_busy == 2  # they overlapped, and never more than two at once
        assert pool.stats.started == 2 and pool.stats.completed == 6 and pool.stats.saturated == 0
    finally:
        pool.close()


def test_a_saturated_pool_answers_503_with_retry_after(app: Flask, client: Any) -> None:  # issue 7 item 8
    with app.app_context():
        person = make_customer()
        headers = auth_headers(client, person)
    pool = DecoderPool(size=1, wait=0.05)
    busy = threading.Thread(target=lambda: pool.run(near_limit_png(), "PNG", DOCUMENT_POLICY))
    try:
        with use_decoder(pool):
            busy.start()
            deadline = time.monotonic() + 30
            while not pool.stats.busy:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            response = upload(client, headers, "id_front")
            assert response.status_code == 503
            assert response.get_json()["error"]["code"] == "service_unavailable"
            # the pool asks for 1 s; the upload route's rate limiter may raise it to its own window's reset
            assert int(response.headers["Retry-After"]) >= 1
            assert pool.stats.saturated == 1
            busy.join(60)
        with app.app_context():
            assert db.session.execute(
                select(func.count()).select_from(Blob).where(Blob.user_id == person.user_id)
            ).scalar_one() == 0
        with pytest.raises(DecodersBusy):
            pool.wait = 0
            pool._slots.acquire()
            try:
                _run_with(pool, photo())
            finally:
                pool._slots.release()
    finally:
        pool.close()


def _run_with(pool: DecoderPool, data: bytes) -> Any:
    return pool.run(data, "JPEG", SELFIE_POLICY)


def test_a_pool_used_after_a_fork_builds_its_own_decoders(small_pool: DecoderPool) -> None:
    with use_decoder(small_pool):
        _run(photo())
    parent_decoder = small_pool._idle[0].process.pid
    pid = os.fork()
    if pid == 0:  # the child must not use (or kill) the parent's decoders
        code = 1
        try:
            small_pool.run(photo(), "JPEG", SELFIE_POLICY)
            code = 0 if small_pool.stats.started == 1 and small_pool._idle[0].process.pid != parent_decoder else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert small_pool._idle[0].process.pid == parent_decoder
    with use_decoder(small_pool):
        assert _run(photo()).width == 1080  # the parent's decoder still answers


def test_wait_idle_returns_when_nothing_runs(small_pool: DecoderPool) -> None:
    imagepool.wait_idle(small_pool, timeout=1)
    assert small_pool.stats.busy == 0
