"""The floor of a run over many domains: dnspython's own CPU for the DNS questions diag asks per domain.

    python bench/dns_floor.py [--domains N] [--rounds R]

``bench/scale.py``'s world (its NSD zones, its lab) for N domains (default 200): first ``diag check
--domains-file`` runs in this process with one worker, every check, while the questions its resolver is asked
are counted (``diag.net.dns.Resolver._lookup``, the lookups that go to the wire: cached and shared answers are
not counted). Then NSD's answer to each of those questions is fetched once over TCP, and dnspython alone builds
each query (``make_query`` with DO and AD, as diag asks, and ``to_wire``) and parses each answer (``from_wire``),
in a loop with nothing else: no sockets, no event loop, no resolver logic, no checks, no outputs. The best of R
rounds (default 7) of CPU time per question, times the questions per domain, is what any run that asks these
questions through dnspython spends per domain at least, and two cores divided by it is the most domains per
second such a run can check on this machine, before NSD's own CPU (which shares the cores in scale.py) and
everything else. Issue 13 item 5 asks 800 domains/s on 2 cores: at most 2.5 ms of CPU per domain in all.

Performance is measured here, never by timed assertions in the tests; record results in bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name
import dns.query
import scale  # bench/scale.py: the zones, NSD and the lab

import diag.net.dns
from diag.cli import main as diag_main


def asked(domains_file: Path, lab_port: int, ca_file: Path, state: Path) -> list[tuple[str, str, bool]]:
    """The questions diag's resolver sends to the wire while it checks the domains of ``domains_file``: name,
    type, and whether with DO and AD (every one in a run with the DNSSEC checks)."""
    questions: list[tuple[str, str, bool]] = []
    lookup = diag.net.dns.Resolver._lookup

    async def counted(
        self: diag.net.dns.Resolver, name: str, rdtype: str, *, dnssec: bool = False
    ) -> diag.net.dns.Answer:
        questions.append((name, rdtype, dnssec))
        return await lookup(self, name, rdtype, dnssec=dnssec)

    os.environ.update(XDG_DATA_HOME=str(state / "data"), XDG_CACHE_HOME=str(state / "cache"))
    diag.net.dns.Resolver._lookup = counted  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the terminal view is not measured
            diag_main(["check", "--domains-file", str(domains_file), "--resolver", scale.NSD_IP, "--smtp-port",
                       str(lab_port), "--ca-file", str(ca_file), "--allow-private", "--workers", "1", "-q",
                       "--json", str(state / "out.json")])  # fmt: skip
    except SystemExit:
        pass
    finally:
        diag.net.dns.Resolver._lookup = lookup  # type: ignore[method-assign]
    return questions


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def query(name: str, rdtype: str, dnssec: bool) -> dns.message.QueryMessage:
    """The query diag sends for the question (its resolver's own ``_request``; EDNS only with DNSSEC, as with
    ``--resolver``)."""
    return diag.net.dns._request(dns.name.from_text(name), rdtype, edns=dnssec, dnssec=dnssec)


def per_question(questions: list[tuple[str, str, bool]], answers: list[bytes], rounds: int) -> dict[str, float]:
    """dnspython's CPU seconds per question (best of ``rounds``): building the query, parsing the answer, both."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for what in ("build", "parse", "both"):
            started = cpu()
            for (name, rdtype, dnssec), answer in zip(questions, answers, strict=True):
                if what != "parse":
                    query(name, rdtype, dnssec).to_wire()
                if what != "build":
                    dns.message.from_wire(answer)
            seconds = (cpu() - started) / len(questions)
            best[what] = min(best.get(what, seconds), seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if min(args.domains, args.rounds) < 1:
        parser.error("--domains and --rounds must be positive")
    nsd = shutil.which("nsd", path="/usr/sbin:/usr/bin") or sys.exit("nsd is not installed")

    directory = Path(tempfile.mkdtemp(prefix="diag-dns-floor-"))
    domains_file = directory / "domains.txt"
    domains_file.write_text("".join(f"{scale.domain_name(i)}\n" for i in range(args.domains)))
    # No rate limit worth the name: every question is answered at once, over UDP or TCP alike.
    config = scale.write_nsd(directory, args.domains, 100_000, 2)
    server = subprocess.Popen([nsd, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        scale.nsd_ready(time.monotonic() + scale.READY_TIMEOUT)
        with scale.LabThread() as lab:
            questions = asked(domains_file, lab.smtp_port, lab.ca_file, directory)
        if not questions:
            sys.exit("diag asked no question: its run failed before any lookup (its error is above)")
        answers = [dns.query.tcp(query(*question), scale.NSD_IP, port=scale.NSD_PORT, timeout=5).to_wire()
                   for question in questions]  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
    best = per_question(questions, answers, args.rounds)

    count = len(questions) / args.domains
    kinds = collections.Counter(rdtype for _, rdtype, _ in questions)
    print(f"{args.domains} domains, {len(questions)} questions to the wire ({count:.2f} per domain: "
          + ", ".join(f"{rdtype} {n}" for rdtype, n in kinds.most_common()) + ")")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    for what, label in (("build", "building the queries"), ("parse", "parsing the answers"), ("both", "both")):
        print(f"dnspython {label}: {best[what] * 1e6:.0f} µs per question, {best[what] * count * 1e3:.2f} ms per "
              f"domain")  # fmt: skip
    print(f"at most {cores / (best['both'] * count):.0f} domains/s on {cores} cores with nothing else")


if __name__ == "__main__":
    main()
