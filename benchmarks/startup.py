"""Start-up of the light commands against a bare interpreter (medians, side by side).

    python benchmarks/startup.py [--runs 5] [--tree PATH]

Runs ``python -c pass``, ``python -m agrame_vdb.cli version`` and ``... --help`` in
turn, ``--runs`` times each, from ``--tree`` (a checkout; default this one), and prints
each median and its ratio to ``python -c pass``. Give an older checkout as ``--tree`` to
compare trees in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tree", type=Path, default=ROOT)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.tree), "HF_HUB_OFFLINE": "1"}
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "agrame-vdb version": [sys.executable, "-m", "agrame_vdb.cli", "version"],
        "agrame-vdb --help": [sys.executable, "-m", "agrame_vdb.cli", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, cwd=args.tree, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"{args.tree}, median of {args.runs}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:22s} {median * 1000:7.0f} ms  ({median / base:4.1f}x python -c pass)")


if __name__ == "__main__":
    main()
