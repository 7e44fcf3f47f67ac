"""Blob encryption throughput next to raw AES-256-GCM, measured in the same run (PERFORMANCE.md).

    .venv/bin/python bench/bench_crypto.py [--rounds 5] [--cell-seconds 0.12] [--report-only]

For 64 KB, 512 KB and 2 MB blobs it times, alternating round by round with the raw cipher (bench/harness.py:
medians of the rounds with their min-max, ratios taken per round):

- raw encrypt / decrypt: one prebuilt ``AESGCM`` object, a fixed nonce, the same AAD: the cipher alone;
- floor: the least any correct call with a per-user key must do, ``AESGCM(key)`` + a fresh nonce + the
  AAD encoding around the same cipher call (reported as ``vs floor``, for context only);
- ``encrypt_blob`` / ``decrypt_blob``: everything a real call does (key setup, fresh nonce, AAD, header);
- round trip (encrypt then decrypt) both ways, plus ``encrypt_blob_into``/``decrypt_blob_into`` into
  reused buffers: the page-fault case from PERFORMANCE.md ("Facts that save days").

Target: ``encrypt_blob`` and ``decrypt_blob`` >= 80% of raw throughput at every size (exit status 1 on a miss,
unless --report-only). Minor page faults per call are reported too. Writes bench/out/crypto.csv. MB = 10^6 bytes.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable

import cryptography
import harness
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from marketplace.crypto import (
    BlobContext,
    decrypt_blob,
    decrypt_blob_into,
    encrypt_blob,
    encrypt_blob_into,
    new_data_key,
    sealed_size,
)

SIZES = {"64KB": 64 * 1024, "512KB": 512 * 1024, "2MB": 2 * 1024 * 1024}
TARGET = 0.80


def measure(fn: Callable[[], object], size: int, seconds: float) -> tuple[float, float]:
    """(MB/s, minor page faults per call) for ``fn`` run for about ``seconds``."""
    fn()
    calls = 1
    while True:  # calibrate: double until one batch takes a tenth of the cell
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= seconds / 10:
            break
        calls *= 2
    batch = max(1, int(calls * seconds / max(time.perf_counter() - start, 1e-9)))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return size * batch / elapsed / 1e6, faults / batch


def operations(size: int) -> dict[str, Callable[[], object]]:
    data_key = new_data_key()
    ctx = BlobContext(
        "8c1f3f9e-3a7b-4a57-9d2b-0c0d7e0a1b2c", "selfie", "0f2c3a4b-5d6e-4f70-8192-a3b4c5d6e7f8"
    )
    aad = ctx.aad()
    raw = AESGCM(data_key)
    nonce = os.urandom(12)
    plaintext = os.urandom(size)
    ciphertext = raw.encrypt(nonce, plaintext, aad)
    envelope = encrypt_blob(data_key, plaintext, ctx)
    assert decrypt_blob(data_key, envelope, ctx) == plaintext
    sealed_buf = bytearray(sealed_size(size))
    opened_buf = bytearray(size)

    def blob_roundtrip_reused() -> None:
        n = encrypt_blob_into(data_key, plaintext, ctx, sealed_buf)
        decrypt_blob_into(data_key, memoryview(sealed_buf)[:n], ctx, opened_buf)

    return {
        "raw_encrypt": lambda: raw.encrypt(nonce, plaintext, aad),
        "blob_encrypt": lambda: encrypt_blob(data_key, plaintext, ctx),
        "raw_decrypt": lambda: raw.decrypt(nonce, ciphertext, aad),
        "floor_encrypt": lambda: AESGCM(data_key).encrypt(os.urandom(12), plaintext, ctx.aad()),
        "floor_decrypt": lambda: AESGCM(data_key).decrypt(nonce, ciphertext, ctx.aad()),
        "blob_decrypt": lambda: decrypt_blob(data_key, envelope, ctx),
        "raw_roundtrip": lambda: raw.decrypt(nonce, raw.encrypt(nonce, plaintext, aad), aad),
        "blob_roundtrip": lambda: decrypt_blob(data_key, encrypt_blob(data_key, plaintext, ctx), ctx),
        "blob_roundtrip_reused": blob_roundtrip_reused,
    }


# (row, raw op, blob op, floor op or None; the >= 80% target applies to rows with a floor op)
ROWS = [
    ("encrypt", "raw_encrypt", "blob_encrypt", "floor_encrypt"),
    ("decrypt", "raw_decrypt", "blob_decrypt", "floor_decrypt"),
    ("roundtrip", "raw_roundtrip", "blob_roundtrip", None),
    ("roundtrip_reused_buffers", "raw_roundtrip", "blob_roundtrip_reused", None),
]


def main() -> int:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cell-seconds", type=float, default=0.12)
    args = parser.parse_args()

    print(f"cryptography {cryptography.__version__}; {harness.machine_line()}; {args.rounds} alternating rounds x "
          f"{args.cell_seconds}s per cell")
    started = time.perf_counter()
    bench = harness.Bench("crypto", args)
    for label, size in SIZES.items():
        ops = operations(size)

        def cell(name: str, ops: dict[str, Callable[[], object]] = ops, size: int = size) -> dict[str, float]:
            mb_s, faults = measure(ops[name], size, args.cell_seconds)
            return {"mb_s": mb_s, "faults": faults}

        for row, raw_op, blob_op, floor_op in ROWS:
            figures = {blob_op: lambda n=blob_op: cell(n)}
            if floor_op:
                figures[floor_op] = lambda n=floor_op: cell(n)
            rounds = harness.alternate(args.rounds, lambda n=raw_op: cell(n), figures)
            bench.add(label, row, "raw MB/s", rounds.values("", "mb_s"))
            bench.add(label, row, "blob MB/s", rounds.values(blob_op, "mb_s"))
            # the >= 80% target applies to the plain calls; the round trips are context for the page-fault fact
            bench.add(label, row, "x raw", rounds.ratios(blob_op, "mb_s"), target=TARGET if floor_op else None)
            if floor_op:
                bench.add(label, row, "x floor", [b / f for b, f in zip(rounds.values(blob_op, "mb_s"),
                                                                        rounds.values(floor_op, "mb_s"),
                                                                        strict=True)])
            bench.add(label, row, "raw faults/call", rounds.values("", "faults"), note="minor page faults")
            bench.add(label, row, "blob faults/call", rounds.values(blob_op, "faults"), note="minor page faults")
        print(f"  {label}: done", flush=True)
    bench.note(f"x raw: encrypt_blob/decrypt_blob throughput over the bare cipher's in the same round (target >= "
               f"{TARGET:.0%}); x floor: over the least a per-user-key call must do (context only). MB = 10^6 bytes. "
               f"{time.perf_counter() - started:.0f} s in all.")
    return bench.finish()


if __name__ == "__main__":
    sys.exit(main())
