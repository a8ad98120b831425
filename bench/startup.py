"""Start-up benchmarks: ``diag --help``, ``diag --version`` and a one-domain ``diag check`` as whole processes,
against bare Python measured in the same run; and how long the lab takes to start.

    python bench/startup.py [--repeat N] [--importtime] [--baseline DIR]

Each process runs ``--repeat`` times, the commands interleaved (bare Python, a one-command click program's
``--help`` as the floor of any click program's, the imports any check needs before its first DNS question, then each
diag command, round after round) so that a load that comes and goes on a shared machine falls on all of them alike;
each line gives the median, the spread, the median over bare Python and the ratio to it. The check is ``diag check
contoso.com`` with ``--resolver``, ``--smtp-port`` and ``--ca-file`` of a lab this script starts once (in its own
event loop, in this process), with the history and the lock in a temporary directory, as a cron job would run it
(stdout is not a terminal). With ``--baseline DIR`` (an earlier source tree, first on the path) each diag command
also runs from it in the same rounds, and a last line per command gives the median of the differences within each
round: on a VM whose speed drifts within minutes, that paired difference shows a change of a few per cent that the
two medians' spread hides.

``--importtime`` also runs each diag command (and the two floors) five times under ``python -X importtime`` and
lists the modules it imports, each with its median time: the 20 with the largest own import time, and the time per
top-level package. These figures are the primary evidence of start-up work: which modules a command loads does not
depend on how loaded the machine is, and their times much less than wall times do.

Performance is measured here, never by timed assertions in the tests; compare with bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The floor of any `--help` made with click, the command-line library diag must use: a program with one command
# and no option of its own, asked for its help (issue 13 item 4 asks `diag --help` to start within 40 ms of bare
# Python).
CLICK_ALONE = """
import gc
import click

@click.command()
def main():
    \"\"\"One command.\"\"\"

main(["--help"], prog_name="alone", standalone_mode=False)
gc.freeze()  # as diag.cli.main does: no last collection at exit
"""

# The floor of a check's start: what any check made with click, asyncio and dnspython imports before its first
# DNS question can leave (issue 13 item 3 gives a whole check over 50 ms round trips 1.15 times its critical path,
# 60 ms beyond the 400 ms of round trips, for all of the start, the CPU and the exit).
FIRST_QUESTION = (
    # dnspython's optional DNS-over-HTTPS and DNS-over-QUIC clients switched off first, as diag.net.dns does.
    "import dns._features; dns._features.force('doh', False); dns._features.force('doq', False); "
    "import gc, asyncio, click, dns.asyncquery, dns.message; gc.freeze()"
)

# Runs of each command under -X importtime with --importtime; the listing gives each module's median.
IMPORTTIME_RUNS = 5

@dataclass(frozen=True, slots=True)
class Imported:
    """One line of ``python -X importtime``: a module, its own and its cumulative import time, its depth."""

    name: str
    own_us: int
    cumulative_us: int
    depth: int


def parse_importtime(stderr: str) -> list[Imported]:
    """The modules of a ``-X importtime`` listing, in the order Python reports them."""
    modules = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        modules.append(Imported(name.strip(), int(own), int(cumulative), depth))
    return modules


def median_imports(runs: Sequence[Sequence[Imported]]) -> list[Imported]:
    """The modules of the first run, each with the median of its times over every run that imported it."""
    own: defaultdict[str, list[int]] = defaultdict(list)
    cumulative: defaultdict[str, list[int]] = defaultdict(list)
    for modules in runs:
        for module in modules:
            own[module.name].append(module.own_us)
            cumulative[module.name].append(module.cumulative_us)
    return [
        Imported(m.name, int(statistics.median(own[m.name])), int(statistics.median(cumulative[m.name])), m.depth)
        for m in runs[0]
    ]


def importtime_report(title: str, modules: Sequence[Imported], *, top: int = 20) -> str:
    """The ``top`` modules by own import time, and the own time summed per top-level package."""
    total = sum(m.own_us for m in modules)
    lines = [f"{title}: {len(modules)} modules, {total / 1000:.1f} ms of imports"]
    for module in sorted(modules, key=lambda m: m.own_us, reverse=True)[:top]:
        lines.append(f"  {module.own_us / 1000:7.1f} ms own {module.cumulative_us / 1000:7.1f} ms cumulative  "
                     f"{module.name}")
    packages: defaultdict[str, list[int]] = defaultdict(list)
    for module in modules:
        packages[module.name.split(".")[0]].append(module.own_us)
    ranked = sorted(packages.items(), key=lambda item: sum(item[1]), reverse=True)[:top]
    lines.append("  by top-level package: " + ", ".join(
        f"{name} {sum(times) / 1000:.1f} ms ({len(times)})" for name, times in ranked
    ))
    return "\n".join(lines)


def _diag_command() -> list[str]:
    """The ``diag`` console script of this Python, as a user runs it; ``python -m diag`` without one."""
    script = Path(sys.executable).parent / "diag"
    return [str(script)] if script.exists() else [sys.executable, "-m", "diag"]


@dataclass(frozen=True, slots=True)
class Run:
    """One process: its wall time, the CPU time it used (user and system, seconds), and its stderr."""

    wall: float
    cpu: float
    stderr: bytes


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_process(argv: Sequence[str], env: dict[str, str]) -> Run:
    """Run ``argv`` to its end (one child at a time, so the CPU time of reaped children is its own). A failure
    stops the benchmark."""
    cpu = _children_cpu()
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n{out.decode()}{err.decode()}")
    return Run(elapsed, _children_cpu() - cpu, err)


async def _lab_seconds() -> float:
    from diag.lab.runner import Lab

    start = time.perf_counter()
    async with Lab():
        return time.perf_counter() - start


def summary(name: str, samples: list[float], bare: float | None) -> str:
    median = statistics.median(samples)
    line = (f"{name:<35} median {median * 1000:7.1f} ms   min {min(samples) * 1000:7.1f}"
            f"   max {max(samples) * 1000:7.1f}   n={len(samples)}")  # fmt: skip
    if bare is not None:
        line += f"   over bare Python {(median - bare) * 1000:+7.1f} ms   ratio {median / bare:5.2f}"
    return line


def paired(runs: Mapping[str, Sequence[Run]], what: str = "wall") -> list[str]:
    """For each command measured with ``--baseline`` too: the median of its differences to the baseline within each
    round (``what``: "wall" or "cpu"). The two ran one after the other, so a load that comes and goes on a shared
    machine falls on both: paired, a difference of a few per cent shows where the medians' spread hides it."""
    lines = []
    for name, measured in runs.items():
        before = runs.get(f"{name} (baseline)")
        if before is None:
            continue
        differences = sorted(getattr(a, what) - getattr(b, what) for a, b in zip(measured, before, strict=True))
        quarter = len(differences) // 4
        median = statistics.median(differences) * 1000
        lines.append(f"{name:<35} {what} minus the baseline's, paired: median {median:+7.1f} ms   middle half "
                     f"{differences[quarter] * 1000:+.1f} to {differences[-1 - quarter] * 1000:+.1f}"
                     f"   n={len(differences)}")  # fmt: skip
    return lines


async def measure(repeat: int, importtime: bool, baseline: Path | None) -> None:
    from diag.lab.runner import Lab

    state = Path(tempfile.mkdtemp(prefix="diag-bench-"))
    # Bytecode is written (as an installed package has it), whatever this shell says: compiling every module
    # on every start would measure the compiler.
    env = {**os.environ, "XDG_DATA_HOME": str(state / "data"), "XDG_CACHE_HOME": str(state / "cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    envs = {"": env}
    if baseline is not None:
        # The source tree first on the path: it wins over the installed (or editable) diag.
        path = os.pathsep.join(filter(None, (str(baseline), env.get("PYTHONPATH"))))
        envs[" (baseline)"] = {**env, "PYTHONPATH": path}
    diag = _diag_command()
    try:
        async with Lab() as lab:
            check = ["check", "contoso.com", *lab.check_option_text().split()]
            python = [sys.executable, "-c", "pass"]
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                "bare python -c pass": (python, env),
                "click alone: one command's --help": ([sys.executable, "-c", CLICK_ALONE], env),
                "first question's imports": ([sys.executable, "-c", FIRST_QUESTION], env),
            }
            for suffix, environment in envs.items():
                for args in (["--help"], ["--version"], check):
                    name = f"diag {' '.join(args[:2]) if args is check else args[0]}{suffix}"
                    commands[name] = ([*diag, *args], environment)
            runs: dict[str, list[Run]] = {name: [] for name in commands}
            for argv, environment in commands.values():  # a round not counted: bytecode written, page cache warm
                await run_process(argv, environment)
            for _round in range(repeat):
                for name, (argv, environment) in commands.items():
                    runs[name].append(await run_process(argv, environment))
            listings: dict[str, list[list[Imported]]] = {}
            for _round in range(IMPORTTIME_RUNS if importtime else 0):
                for name, (argv, environment) in list(commands.items())[1:]:
                    command = argv if argv[0] == sys.executable else [sys.executable, *argv]
                    run = await run_process([command[0], "-X", "importtime", *command[1:]], environment)
                    listings.setdefault(name, []).append(parse_importtime(run.stderr.decode()))
        starts = [await _lab_seconds() for _ in range(min(repeat, 5))]
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for what in ("wall", "cpu"):
        print(f"{what} time ({'elapsed' if what == 'wall' else 'user + system, of the process'}):")
        bare = statistics.median(getattr(run, what) for run in runs["bare python -c pass"])
        for name, measured in runs.items():
            values = [getattr(run, what) for run in measured]
            print("  " + summary(name, values, None if name.startswith("bare") else bare))
        for line in paired(runs, what):
            print("  " + line)
    print(summary("lab start (in process)", starts, None))
    for name, runs_of_it in listings.items():
        print()
        title = f"python -X importtime: {name} (median of {len(runs_of_it)})"
        print(importtime_report(title, median_imports(runs_of_it)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of each process (default 20)")
    parser.add_argument("--importtime", action="store_true",
                        help="also list what each diag command imports (python -X importtime)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run each diag command from this source tree (e.g. `git archive` of an earlier "
                        "commit, unpacked), in the same rounds")
    args = parser.parse_args()
    asyncio.run(measure(args.repeat, args.importtime, args.baseline))


if __name__ == "__main__":
    main()
