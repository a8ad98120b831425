"""Wall time of ``diag check`` over every lab domain: concurrent (as diag runs) against one address at a time.

    python bench/check_latency.py [--timeout S] [--repeat N]

Concurrent: one run over all lab domains, as ``diag check <all> --lab`` does it. Then each domain alone, to
show what one domain costs. Sequential: the same probes with one connection at a time, domain after domain,
which is what a checker without concurrency pays. The tarpit and the blackhole each cost one ``--timeout``.
Record results with the machine in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time

from checks import default_registry
from diag.lab.runner import Lab
from diag.lab.world import PURPOSES
from diag.runner import run_checks


async def measure(operation_timeout: float, repeat: int) -> None:
    registry = default_registry()
    domains = list(PURPOSES)
    async with Lab() as lab:
        concurrent = lab.run_options(timeout=operation_timeout)
        one_at_a_time = lab.run_options(timeout=operation_timeout, total_connections=1, per_host_connections=1)

        async def timed(names: list[str], options: object) -> float:
            start = time.perf_counter()
            await run_checks(names, registry, options)  # type: ignore[arg-type]
            return time.perf_counter() - start

        together = [await timed(domains, concurrent) for _ in range(repeat)]
        alone = {d: statistics.median([await timed([d], concurrent) for _ in range(repeat)]) for d in domains}
        sequential = []
        for _ in range(repeat):
            start = time.perf_counter()
            for domain in domains:
                await run_checks([domain], registry, one_at_a_time)
            sequential.append(time.perf_counter() - start)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"--timeout {operation_timeout:g}, {len(domains)} lab domains, median of {repeat}")
    print(f"all domains, one concurrent run     {statistics.median(together) * 1000:9.1f} ms")
    print(f"all domains, one address at a time  {statistics.median(sequential) * 1000:9.1f} ms")
    print("each domain alone (concurrent within the domain):")
    for domain, seconds in alone.items():
        print(f"  {domain:<26} {seconds * 1000:9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.timeout, args.repeat))


if __name__ == "__main__":
    main()
