"""Wall time of ``diag check`` over every lab domain: concurrent (as diag runs) against one address at a time;
and with ``--latency``, one domain as a whole process over a lab whose every packet takes that round trip.

    python bench/check_latency.py [--timeout S] [--repeat N]
    python bench/check_latency.py --latency 50ms [--repeat N] [--domain contoso.com] [--baseline DIR]

Concurrent: one run over all lab domains, as ``diag check <all> --lab`` does it. Then each domain alone, to
show what one domain costs. Sequential: the same probes with one connection at a time, domain after domain,
which is what a checker without concurrency pays. The tarpit and the blackhole each cost one ``--timeout``.

Latency mode (issue 13): the lab runs with ``latency`` (diag.lab.latency: delaying proxies in front of its DNS
server and mail hosts, as ``diag lab serve --latency`` does), and ``diag check DOMAIN --resolver ... --smtp-port ...
--ca-file ... --check mx --check port25 --check starttls --check certificate`` (the four mail checks; the policy
checks add lookups of their own) runs as a whole process, against its critical path: MX query, A and AAAA queries
together, TCP connect and greeting, EHLO, STARTTLS, the TLS 1.3 handshake, EHLO again: 8 round trips (the reply to
QUIT is not on it). Bare ``python -c pass`` runs in the same rounds. Where Postfix's posttls-finger is installed, it
is the anchor, on the domain's first MX, in the same rounds: with its own DNS lookups when this runs as root with
``unshare`` (posttls-finger reads /etc/resolv.conf, which a private mount namespace points at the lab's DNS server;
the lab's DNS then listens on port 53), and always on the MX's address given as ``[IP]:PORT`` without DNS. The same
checks also run in the benchmark's own process (``run_checks``, the lab's organization left out as on the command
line): the probes' time without a process's start-up. With ``--baseline``, the paired difference as in
bench/startup.py. Record results with the machine in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from startup import Run, paired, run_process, summary

from checks import default_registry
from diag.lab.runner import Lab
from diag.lab.world import PURPOSES
from diag.runner import run_checks

POSTTLS_FINGER = "/usr/sbin/posttls-finger"
# The critical path of a check of one healthy MX host (module docstring), in round trips.
CRITICAL_ROUND_TRIPS = 8
# The checks the latency mode times (their critical path is the eight round trips above).
MAIL_CHECKS = ("mx", "port25", "starttls", "certificate")


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


def _posttls_finger_commands(lab: Lab, domain: str, state: Path) -> dict[str, list[str]]:
    """posttls-finger on the domain's first MX: with DNS (root, unshare, the lab's DNS on port 53) and without."""
    if not os.path.exists(POSTTLS_FINGER):
        return {}
    mx_host, mx_ip = _first_mx(lab, domain)
    verify = ["-l", "secure", "-F", str(lab.ca_file)]
    commands = {"posttls-finger [IP]:PORT (no DNS)": [POSTTLS_FINGER, *verify, f"[{mx_ip}]:{lab.smtp_port}", mx_host]}
    if lab.nameserver.port == 53:
        resolv = state / "resolv.conf"
        resolv.write_text(f"nameserver {lab.nameserver.ip}\n")
        finger = " ".join([POSTTLS_FINGER, *verify, f"{domain}:{lab.smtp_port}", mx_host])
        commands["posttls-finger DOMAIN (its own DNS)"] = [
            "unshare", "-m", "sh", "-c", f"mount --bind {resolv} /etc/resolv.conf && exec {finger}",
        ]  # fmt: skip
    return commands


def _first_mx(lab: Lab, domain: str) -> tuple[str, str]:
    """The most preferred MX host of ``domain`` in the lab's world, and its address."""
    records = [r for r in lab.world.records if r.name == domain and r.rdtype == "MX"]
    _preference, name = min((int(preference), name) for preference, name in (r.split() for r in records[0].rdata))
    host = name.rstrip(".")
    addresses = [r.rdata[0] for r in lab.world.records if r.name == host and r.rdtype == "A"]
    return host, addresses[0]


async def measure_latency(latency: float, repeat: int, domain: str, *, dns_port: int, baseline: Path | None) -> None:
    state = Path(tempfile.mkdtemp(prefix="diag-bench-"))
    env = {**os.environ, "XDG_DATA_HOME": str(state / "data"), "XDG_CACHE_HOME": str(state / "cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode written, as an installed package has it
    script = Path(sys.executable).parent / "diag"
    diag = [str(script)] if script.exists() else [sys.executable, "-m", "diag"]
    try:
        async with Lab(latency=latency, dns_port=dns_port) as lab:
            # The four mail checks, whose critical path is CRITICAL_ROUND_TRIPS (issue 13, item 3); the policy checks
            # add their own lookups (SPF includes, the DNSSEC chain of trust from the root) and are left out.
            selected = [part for check_id in MAIL_CHECKS for part in ("--check", check_id)]
            check = [*diag, "check", domain, *lab.option_text().split(), *selected]
            commands = {
                "bare python -c pass": ([sys.executable, "-c", "pass"], env),
                f"diag check {domain}": (check, env),
                **{name: (argv, env) for name, argv in _posttls_finger_commands(lab, domain, state).items()},
            }
            if baseline is not None:  # an earlier source tree first on the path, in the same rounds
                path = os.pathsep.join(filter(None, (str(baseline), env.get("PYTHONPATH"))))
                commands[f"diag check {domain} (baseline)"] = (check, {**env, "PYTHONPATH": path})
            runs: dict[str, list[Run]] = {name: [] for name in commands}
            for argv, environment in commands.values():  # a round not counted: bytecode written, page cache warm
                await run_process(argv, environment)
            probes: list[float] = []
            # Without a configuration, as on the command line: the checks of the organization's connectors are out
            registry = default_registry().select(MAIL_CHECKS)
            for _round in range(repeat):
                for name, (argv, environment) in commands.items():
                    runs[name].append(await run_process(argv, environment))
                # The same checks in this process: the probes' own time, without a process's start-up
                start = time.perf_counter()
                await run_checks([domain], registry, lab.run_options(organization=None))
                probes.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    critical = CRITICAL_ROUND_TRIPS * latency
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"latency {latency * 1000:g} ms round trip on every lab packet; critical path {CRITICAL_ROUND_TRIPS} round "
          f"trips = {critical * 1000:.0f} ms; median of {repeat}")  # fmt: skip
    medians = {name: statistics.median(run.wall for run in measured) for name, measured in runs.items()}
    for name, measured in runs.items():
        print(summary(name, [run.wall for run in measured], None))
    print(summary(f"run_checks({domain}) in process", probes, None))
    for line in paired(runs):
        print(line)
    print(f"in process / critical path: {statistics.median(probes) / critical:.2f}")
    for name, median in medians.items():
        if name.startswith("diag"):
            print(f"{name} / critical path: {median / critical:.2f}")
            for anchor, anchored in medians.items():
                if anchor.startswith("posttls-finger"):
                    print(f"{name} / {anchor}: {median / anchored:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=None, help="default: 3, or 20 with --latency")
    parser.add_argument("--latency", default=None, metavar="RTT",
                        help="latency mode: this round-trip time on every lab packet (e.g. 50ms)")
    parser.add_argument("--domain", default="contoso.com", help="the domain of the latency mode")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="latency mode: also run the check from this source tree (an earlier commit, unpacked)")
    args = parser.parse_args()
    if args.latency is not None:
        from diag.lab.latency import parse_latency

        # posttls-finger resolves through /etc/resolv.conf, which names no port: with root, the lab's DNS gets 53
        finger_dns = os.geteuid() == 0 and shutil.which("unshare") and os.path.exists(POSTTLS_FINGER)
        latency = parse_latency(args.latency)
        port = 53 if finger_dns else 0
        asyncio.run(measure_latency(latency, args.repeat or 20, args.domain, dns_port=port, baseline=args.baseline))
    else:
        asyncio.run(measure(args.timeout, args.repeat or 3))


if __name__ == "__main__":
    main()
