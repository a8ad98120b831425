"""Benchmarks of what a user waits for: start-up, lab start, and a full check of every lab domain.

    python bench/bench_check.py [--repeat N]

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


async def _lab_seconds() -> tuple[float, float, int]:
    from checks import default_registry
    from diag.lab.runner import Lab
    from diag.lab.world import PURPOSES
    from diag.runner import run_checks

    start = time.perf_counter()
    async with Lab() as lab:
        started = time.perf_counter() - start
        begin = time.perf_counter()
        report = await run_checks(list(PURPOSES), default_registry(), lab.run_options(timeout=2.0))
        checked = time.perf_counter() - begin
    return started, checked, len(report.domains)


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
    starts, checks = [], []
    domains = 0
    for _ in range(args.repeat):
        started, checked, domains = asyncio.run(_lab_seconds())
        starts.append(started)
        checks.append(checked)
    print(_summary("diag --help (process)", helps))
    print(_summary("lab start", starts))
    print(_summary(f"check {domains} lab domains", checks))


if __name__ == "__main__":
    main()
