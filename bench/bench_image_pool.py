"""Decoder pool benchmark (issue 7 item 8): what decoding in separate processes costs, and what it saves.

    python bench/bench_image_pool.py [--rounds 5] [--per-round 8] [--flood 16] [--report-only]

1. Latency per image, pool vs in-process, for a 1080x1440 phone selfie (SELFIE_POLICY) and a 4000x3000
   12 MP JPEG (DOCUMENT_POLICY), one caller at a time. Each round runs a batch inline and a batch through a
   warm pool of 2 decoders, alternating which goes first; the figure is the median of the rounds' medians,
   with the spread (min-max of the round medians). Targets (PERFORMANCE.md) apply to the pool path, which is
   what uploads use: selfie <= 30 ms, 12 MP <= 180 ms.
2. A flood: 16 concurrent near-limit PNGs (6,300 x 6,300, about 130 KB each, as in the issue) sent by 16
   threads of a fresh "web process" (a subprocess of this script), once through the pool and once inline.
   The figure is that process's peak RSS growth (VmHWM after a reset, minus the RSS before the flood), plus
   the decoders' own peak RSS. Target: the web process grows by at most 128 MB with the pool (16 inputs and
   outputs, and the threads; inline it grows by gigabytes).

Exits 1 when a target is missed, unless --report-only. Results go to bench/out/image_pool.csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import PIL
from PIL import Image

from marketplace.errors import AppError
from marketplace.imagepool import DecoderPool, InlineDecoder, use_decoder
from marketplace.images import DOCUMENT_POLICY, SELFIE_POLICY, ImagePolicy, process_image

OUT_DIR = Path(__file__).resolve().parent / "out"
SELFIE_TARGET_MS = 30.0  # PERFORMANCE.md: "Selfie pipeline <= 30 ms"
TWELVE_MP_TARGET_MS = 180.0  # PERFORMANCE.md: "12 MP <= 180 ms"
FLOOD_GROWTH_TARGET_MB = 128.0


def photo_like(width: int, height: int) -> Image.Image:
    """Gradients, blotches and grain (the same recipe as bench_images.py), so the JPEG weighs like a photo."""
    bands = []
    for angle, sigma in ((0, 60), (35, 50), (80, 70)):
        gradient = Image.linear_gradient("L").rotate(angle).resize((width, height), Image.Resampling.BILINEAR)
        blotches = Image.effect_noise((width // 4, height // 4), sigma).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        grain = Image.effect_noise((width, height), sigma / 3)
        bands.append(Image.blend(Image.blend(gradient, blotches, 0.45), grain, 0.25))
    return Image.merge("RGB", bands)


def jpeg(im: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def near_limit_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (6300, 6300), (200, 30, 30)).save(out, "PNG", optimize=True)
    return out.getvalue()


def batch_median_ms(data: bytes, policy: ImagePolicy, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        process_image(io.BytesIO(data), policy=policy, declared_type="image/jpeg")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def latency(data: bytes, policy: ImagePolicy, rounds: int, per_round: int, pool: DecoderPool) -> dict[str, Any]:
    inline = InlineDecoder()
    results: dict[str, list[float]] = {"inline": [], "pool": []}
    for decoder in (inline, pool):  # warm both: the pool's decoders start, Pillow's caches fill
        with use_decoder(decoder):
            batch_median_ms(data, policy, 2)
    for round_ in range(rounds):
        order = [("inline", inline), ("pool", pool)]
        if round_ % 2:
            order.reverse()
        for name, decoder in order:
            with use_decoder(decoder):
                results[name].append(batch_median_ms(data, policy, per_round))
    return {name: (statistics.median(values), min(values), max(values)) for name, values in results.items()}


# ---- the flood, in a fresh process that stands for a web worker ----------------------------------------------


def _status(pid: int | str = "self") -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])  # kB
    return values


def flood_child(mode: str, concurrency: int, workers: int, wait: float) -> None:
    data = sys.stdin.buffer.read()
    pool = DecoderPool(size=workers, wait=wait)
    decoder: Any = pool if mode == "pool" else InlineDecoder()
    small = jpeg(Image.new("RGB", (64, 64), (1, 2, 3)), 80)
    with use_decoder(decoder):
        process_image(io.BytesIO(small), policy=DOCUMENT_POLICY)  # a warm pool, as after the first upload
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM: the peak measured is the flood's
    before = _status()["VmRSS"]
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)

    def one() -> None:
        barrier.wait()
        try:
            with use_decoder(decoder):
                process_image(io.BytesIO(data), policy=DOCUMENT_POLICY, declared_type="image/png")
            outcome = "accepted"
        except AppError as exc:
            outcome = exc.code
        with lock:
            outcomes.append(outcome)

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    peak = _status()["VmHWM"]
    decoders_kb = [_status(w.process.pid)["VmHWM"] for w in pool._idle] if mode == "pool" else []
    print(json.dumps({
        "mode": mode, "before_kb": before, "peak_kb": peak, "elapsed_s": elapsed,
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "decoder_peak_kb": decoders_kb, "peak_busy": pool.stats.peak_busy if mode == "pool" else concurrency,
    }))


def flood(mode: str, data: bytes, concurrency: int, workers: int, wait: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--flood-child", mode, "--flood", str(concurrency), "--workers", str(workers),
         "--wait", str(wait)],
        input=data, capture_output=True, timeout=900, check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def latency_rows(args: argparse.Namespace, selfie: bytes, big: bytes, rows: list[dict[str, Any]],
                 missed: list[str]) -> None:
    pool = DecoderPool(size=args.workers)
    header = f"{'input':<22} {'inline ms':>18} {'pool ms':>18} {'overhead':>9} {'target':>7}  met"
    print()
    print(header)
    print("-" * len(header))
    for name, data, policy, target in (
        ("selfie 1080x1440", selfie, SELFIE_POLICY, SELFIE_TARGET_MS),
        ("12 MP 4000x3000", big, DOCUMENT_POLICY, TWELVE_MP_TARGET_MS),
    ):
        figures = latency(data, policy, args.rounds, args.per_round, pool)
        (inline, i_lo, i_hi), (pooled, p_lo, p_hi) = figures["inline"], figures["pool"]
        met = pooled <= target
        if not met:
            missed.append(name)
        print(f"{name:<22} {inline:7.1f} ({i_lo:4.0f}-{i_hi:4.0f}) {pooled:7.1f} ({p_lo:4.0f}-{p_hi:4.0f}) "
              f"{pooled - inline:+8.1f} {target:7.0f}  {'yes' if met else 'NO'}")
        rows.append({"scenario": name, "inline_median_ms": round(inline, 2), "inline_min_ms": round(i_lo, 2),
                     "inline_max_ms": round(i_hi, 2), "pool_median_ms": round(pooled, 2),
                     "pool_min_ms": round(p_lo, 2), "pool_max_ms": round(p_hi, 2),
                     "overhead_ms": round(pooled - inline, 2), "target": target, "met": met})
    pool.close()


def flood_row(args: argparse.Namespace, mode: str, png: bytes, rows: list[dict[str, Any]],
              missed: list[str]) -> None:
    result = flood(mode, png, args.flood, args.workers, args.wait)
    growth_mb = (result["peak_kb"] - result["before_kb"]) / 1024
    decoders = ", ".join(f"{kb / 1024:.0f}" for kb in result["decoder_peak_kb"]) or "-"
    met = growth_mb <= FLOOD_GROWTH_TARGET_MB if mode == "pool" else None
    if met is False:
        missed.append("flood")
    print(f"flood {args.flood} x near-limit PNG, {mode:<6}: web process peak RSS +{growth_mb:7.0f} MB "
          f"(from {result['before_kb'] / 1024:.0f} MB), decoders' peaks [{decoders}] MB, "
          f"{result['elapsed_s']:.1f} s, {result['outcomes']}, at most {result['peak_busy']} decoding at once"
          + ("" if met is None else f"; target <= {FLOOD_GROWTH_TARGET_MB:.0f} MB: {'yes' if met else 'NO'}"))
    rows.append({"scenario": f"flood {args.flood} {mode}", "peak_growth_mb": round(growth_mb, 1),
                 "decoder_peak_mb": decoders, "elapsed_s": round(result["elapsed_s"], 2),
                 "outcomes": json.dumps(result["outcomes"]),
                 "target": FLOOD_GROWTH_TARGET_MB if met is not None else "", "met": "" if met is None else met})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wait", type=float, default=300, help="seconds a flooded upload may wait (bench only)")
    parser.add_argument("--skip-inline-flood", action="store_true", help="skip the inline flood (GBs of RAM)")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even when a target is missed")
    parser.add_argument("--flood-child", choices=["pool", "inline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_child:
        flood_child(args.flood_child, args.flood, args.workers, args.wait)
        return 0

    started = time.perf_counter()
    selfie = jpeg(photo_like(1080, 1440), quality=90)
    big = jpeg(photo_like(4000, 3000), quality=92)
    png = near_limit_png()
    print(f"Pillow {PIL.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; rounds={args.rounds} x {args.per_round} images, pool of {args.workers}")
    print(f"inputs: selfie {len(selfie) / 1e6:.2f} MB, 12 MP {len(big) / 1e6:.2f} MB, "
          f"near-limit PNG 6300x6300 {len(png) / 1e3:.0f} KB")

    rows: list[dict[str, Any]] = []
    missed: list[str] = []
    latency_rows(args, selfie, big, rows, missed)
    print()
    for mode in ["pool"] if args.skip_inline_flood else ["pool", "inline"]:
        flood_row(args, mode, png, rows, missed)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "image_pool.csv"
    fields = sorted({key for row in rows for key in row})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {path} in {time.perf_counter() - started:.1f} s")
    if missed:
        print(f"missed targets: {', '.join(missed)}" + (" (--report-only)" if args.report_only else ""))
        return 0 if args.report_only else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
