"""Images/s of `pipeline prepare imagenet` per output format and writer count, medians of repeats.

  python bench/prepare_rate.py ARCHIVES_DIR [--workers 1,2] [--repeats 3]

Each repeat writes into a fresh folder (nothing already done); the archives are read once before
timing, so they come from the page cache as on a node that has just copied them to local disk.
The rate is prepare's own figure (images written / seconds of writing, after the archive scan).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for archive in Path(args.src).iterdir():  # warm the page cache
        archive.read_bytes() if archive.is_file() else None
    rows = []
    for fmt in ("folder", "shards"):
        for workers in map(int, args.workers.split(",")):
            rates, totals = [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    proc = subprocess.run([sys.executable, "-m", "pipeline", "prepare", "imagenet", args.src, "--out",
                                           f"{out}/o", "--format", fmt, "--workers", str(workers)],
                                          capture_output=True, text=True, check=True)
                    totals.append(time.perf_counter() - start)
                found = re.search(r"prepare: ([\d,]+) images in [\d.]+ s \(([\d,]+) img/s\)", proc.stderr)
                rates.append(float(found.group(2).replace(",", "")))
            rows.append({"format": fmt, "workers": workers, "img_per_sec": statistics.median(rates),
                         "min": min(rates), "max": max(rates), "command_seconds": statistics.median(totals)})
            print(f"{fmt:<7} workers {workers}: {rows[-1]['img_per_sec']:,.0f} img/s (min {min(rates):,.0f}, "
                  f"max {max(rates):,.0f}); whole command {rows[-1]['command_seconds']:.1f} s", flush=True)
    print(json.dumps({"src": args.src, "repeats": args.repeats, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
