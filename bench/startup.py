"""Start-up benchmarks: how long ``diag --help`` takes as a process, and how long the lab takes to start.

    python bench/startup.py [--repeat N]

Prints the median and the spread of each measurement; compare with the baselines in bench/README.md.
Performance is measured here, never by timed assertions in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diag", "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


async def _lab_seconds() -> float:
    from diag.lab.runner import Lab

    start = time.perf_counter()
    async with Lab():
        return time.perf_counter() - start


def _summary(name: str, samples: list[float]) -> str:
    return (
        f"{name:<28} median {statistics.median(samples) * 1000:8.1f} ms"
        f"   min {min(samples) * 1000:8.1f}   max {max(samples) * 1000:8.1f}   n={len(samples)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    helps = [_help_seconds() for _ in range(args.repeat)]
    starts = [asyncio.run(_lab_seconds()) for _ in range(args.repeat)]
    print(_summary("diag --help (process)", helps))
    print(_summary("lab start", starts))


if __name__ == "__main__":
    main()
