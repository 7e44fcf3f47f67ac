"""Blob encryption throughput next to raw AES-256-GCM, measured in the same run (PERFORMANCE.md).

    .venv/bin/python bench/bench_crypto.py [--rounds 5] [--cell-seconds 0.12] [--check]

For 64 KB, 512 KB and 2 MB blobs it times, interleaved round by round (medians reported):

- raw encrypt / decrypt: one prebuilt ``AESGCM`` object, a fixed nonce, the same AAD: the cipher alone;
- floor: the least any correct call with a per-user key must do, ``AESGCM(key)`` + a fresh nonce + the
  AAD encoding around the same cipher call (reported as ``vs floor``, for context only);
- ``encrypt_blob`` / ``decrypt_blob``: everything a real call does (key setup, fresh nonce, AAD, header);
- round trip (encrypt then decrypt) both ways, plus ``encrypt_blob_into``/``decrypt_blob_into`` into
  reused buffers: the page-fault case from PERFORMANCE.md ("Facts that save days").

Target: ``encrypt_blob`` and ``decrypt_blob`` >= 80% of raw throughput at every size. Minor page faults
per call are reported next to each figure. Writes bench/out/crypto.csv. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cryptography
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
OUT = Path(__file__).resolve().parent / "out" / "crypto.csv"


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cell-seconds", type=float, default=0.12)
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args()

    print(
        f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds x {args.cell_seconds}s per cell"
    )
    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    for label, size in SIZES.items():
        ops = operations(size)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
        names = list(ops)
        for round_no in range(args.rounds):
            shift = round_no % len(names)  # rotate the order so drift hits every op alike
            for name in names[shift:] + names[:shift]:
                samples[name].append(measure(ops[name], size, args.cell_seconds))
        median = {name: statistics.median(mb for mb, _ in values) for name, values in samples.items()}
        faults = {name: statistics.median(f for _, f in values) for name, values in samples.items()}
        for row, raw_op, blob_op, floor_op in ROWS:
            targeted = floor_op is not None
            ratio = median[blob_op] / median[raw_op]
            # fixed cost per call that the bare cipher does not pay: key setup, nonce, AAD, header
            overhead_us = (size / median[blob_op] - size / median[raw_op]) if targeted else None

            rows.append(
                {
                    "size": label,
                    "size_bytes": size,
                    "operation": row,
                    "raw_mb_s": round(median[raw_op]),
                    "blob_mb_s": round(median[blob_op]),
                    "ratio": round(ratio, 3),
                    "target": TARGET if targeted else "",
                    "met": ("yes" if ratio >= TARGET else "no") if targeted else "",
                    "raw_minor_faults_per_call": round(faults[raw_op], 1),
                    "blob_minor_faults_per_call": round(faults[blob_op], 1),
                    "overhead_us_per_call": "" if overhead_us is None else round(overhead_us, 2),
                    "floor_mb_s": round(median[floor_op]) if floor_op else "",
                    "ratio_vs_floor": round(median[blob_op] / median[floor_op], 3) if floor_op else "",
                }
            )

    header = (
        f"{'size':>6} {'operation':<25} {'raw MB/s':>9} {'blob MB/s':>10} {'ratio':>6} "
        f"{'target':>7} {'met':>4} {'faults raw/blob':>16} {'+us/call':>9} {'vs floor':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        target = f">={r['target']:.0%}" if r["target"] != "" else ""
        faults_text = f"{r['raw_minor_faults_per_call']}/{r['blob_minor_faults_per_call']}"
        vs_floor = f"{r['ratio_vs_floor']:.0%}" if r["ratio_vs_floor"] != "" else ""
        print(
            f"{r['size']:>6} {r['operation']:<25} {r['raw_mb_s']:>9} {r['blob_mb_s']:>10} "
            f"{r['ratio']:>6.0%} {target:>7} {r['met']:>4} {faults_text:>16} "
            f"{r['overhead_us_per_call']!s:>9} {vs_floor:>9}"
        )
    missed = [r for r in rows if r["met"] == "no"]
    print(
        f"\ntarget (encrypt_blob/decrypt_blob >= {TARGET:.0%} of raw AES-GCM): "
        + (
            "met at every size"
            if not missed
            else "missed for " + ", ".join(f"{r['size']} {r['operation']}" for r in missed)
        )
    )
    print(f"elapsed {time.perf_counter() - started:.1f}s")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    measured_at = datetime.now(UTC).isoformat(timespec="seconds")
    with OUT.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["measured_at", "cryptography", *rows[0]])
        writer.writeheader()
        for r in rows:
            writer.writerow({"measured_at": measured_at, "cryptography": cryptography.__version__, **r})
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
