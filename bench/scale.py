"""Scale: one ``diag check --domains-file`` run over thousands of domains served by NSD with rate limiting on.

    python bench/scale.py [--domains N] [--workers W] [--timeout S] [--rrl-ratelimit QPS] [--rrl-slip N]
                          [--no-anchor] [--anchor-domains N] [--keep]

The world, all on loopback:

- DNS: a private NSD instance (``nsd -d -c DIR/nsd.conf``: its own config, pid file, zone list and log in a
  temporary directory, no database, no remote control; the system's NSD is never touched) on 127.0.55.55:53,
  authoritative for ``scale.example`` (the N domains ``dNNNNN.scale.example``, each with SPF and DMARC records),
  ``mail.protection.outlook.com``, ``contoso.com`` and ``tailspintoys.com``, with response rate limiting on
  (``rrl-ratelimit``, default 200 responses/s per class and /24, ``rrl-slip`` 2: every second limited answer is
  a truncated one, which sends the client to TCP, the others are dropped). Most AAAA questions get NODATA, which
  RRL counts per zone, so the limit bites and UDP answers are lost; the NSD log's ``ratelimit block`` lines
  show it.
- Mail hosts: the embedded lab's healthy hosts (the cloud ``*.mail.protection.outlook.com``,
  ``mail.contoso.com``, ``sales-mail.contoso.com``, ``mail.tailspintoys.com``: real STARTTLS with the lab's
  certificates), started in this process; their CA is passed with ``--ca-file``.
- Domains, by index modulo 20: 0 a null MX; 1 no MX but an A record (implicit MX); 2-9 a tenant host
  ``dNNNNN-scale-example.mail.protection.outlook.com`` (the cloud's certificate matches); 10-15 the shared hosts
  ``mail.contoso.com`` and ``mail.tailspintoys.com``; 16-19 their own ``mx.dNNNNN.scale.example`` on
  ``sales-mail.contoso.com``'s address (a certificate name mismatch, as often in real life).

Measured: ``diag check --domains-file F --resolver 127.0.55.55 --smtp-port P --ca-file CA --allow-private
--json out.json -q`` as a whole process (with the default history, kept under a temporary XDG_DATA_HOME):
wall time, domains/s, the peak resident memory of the process tree (the sum over diag and its workers, sampled
every 20 ms from /proc, and the largest single process as the kernel reports it), the results per status, and
the CPU time NSD (its processes) used meanwhile, since it shares the cores with diag. An
``error`` or ``timeout`` result whose reason is a DNS timeout is an answer lost for good; there must be none.

Anchor: checkdmarc (``pip install checkdmarc``), when installed, over the same domains with the same
nameserver, as a whole process. It checks SPF and DMARC records (and looks up MX and NS) but opens no SMTP
session, so it does less per domain than diag; ``--anchor-domains`` limits it to the first N domains, since it
is slow. Record results with the machine in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

from diag.lab.runner import Lab

NSD_IP = "127.0.55.55"
NSD_PORT = 53
ZONE = "scale.example"
CLOUD_ZONE = "mail.protection.outlook.com"
CLOUD_IP = "127.0.1.10"  # the lab's cloud host, certificate *.mail.protection.outlook.com
SHARED = (("mail.contoso.com", "127.0.10.10"), ("mail.tailspintoys.com", "127.0.30.10"))
OWN_IP = "127.0.10.11"  # the lab's sales-mail.contoso.com: a host of its own under another name
READY_TIMEOUT = 20.0
SAMPLE_EVERY = 0.02


def domain_name(index: int) -> str:
    return f"d{index:05}.{ZONE}"


def zones(count: int) -> dict[str, list[str]]:
    """Zone name → records (zone-file lines after the SOA and NS)."""
    scale: list[str] = []
    cloud: list[str] = []
    for index in range(count):
        name = domain_name(index)
        label = name.removesuffix(f".{ZONE}")
        scale.append(f'{label} TXT "v=spf1 mx -all"')
        scale.append(f'_dmarc.{label} TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{name}"')
        kind = index % 20
        if kind == 0:
            scale.append(f"{label} MX 0 .")
        elif kind == 1:
            scale.append(f"{label} A {SHARED[1][1]}")
        elif kind < 10:
            tenant = name.replace(".", "-")
            scale.append(f"{label} MX 10 {tenant}.{CLOUD_ZONE}.")
            cloud.append(f"{tenant} A {CLOUD_IP}")
        elif kind < 16:
            scale.append(f"{label} MX 10 {SHARED[0][0]}.")
            scale.append(f"{label} MX 20 {SHARED[1][0]}.")
        else:
            scale.append(f"{label} MX 10 mx.{label}")
            scale.append(f"mx.{label} A {OWN_IP}")
    return {
        ZONE: scale,
        CLOUD_ZONE: cloud,
        "contoso.com": [f"mail A {SHARED[0][1]}"],
        "tailspintoys.com": [f"mail A {SHARED[1][1]}"],
    }


def write_nsd(directory: Path, count: int, ratelimit: int, slip: int) -> Path:
    clauses = []
    for zone, records in zones(count).items():
        header = [
            f"$ORIGIN {zone}.", "$TTL 3600",
            f"@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 3600",
            f"@ NS ns.{zone}.", f"ns A {NSD_IP}",
        ]  # fmt: skip
        (directory / f"{zone}.zone").write_text("\n".join(header + records) + "\n")
        clauses.append(f"zone:\n    name: {zone}\n    zonefile: {zone}.zone\n")
    config = directory / "nsd.conf"
    config.write_text(
        "server:\n"
        f"    ip-address: {NSD_IP}@{NSD_PORT}\n"
        "    do-ip6: no\n"
        '    username: ""\n'
        '    chroot: ""\n'
        f"    zonesdir: {directory}\n"
        '    database: ""\n'
        f"    zonelistfile: {directory}/zone.list\n"
        f"    xfrdfile: {directory}/xfrd.state\n"
        f"    xfrdir: {directory}\n"
        f"    pidfile: {directory}/nsd.pid\n"
        f"    logfile: {directory}/nsd.log\n"
        "    server-count: 1\n"
        "    verbosity: 1\n"
        "    tcp-count: 200\n"
        f"    rrl-ratelimit: {ratelimit}\n"
        f"    rrl-slip: {slip}\n"
        "    rrl-ipv4-prefix-length: 24\n"
        "remote-control:\n"
        "    control-enable: no\n" + "".join(clauses)
    )
    return config


def nsd_ready(deadline: float) -> None:
    query = dns.message.make_query(f"ns.{ZONE}", "A")
    while True:
        try:
            dns.query.udp(query, NSD_IP, port=NSD_PORT, timeout=0.5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit("NSD did not answer; see its log (--keep)") from None
            time.sleep(0.1)


class LabThread:
    """The lab's mail hosts in a thread of this process (like tests/conftest.py)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lab = Lab()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lab", daemon=True)

    def __enter__(self) -> Lab:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.lab.start(), self.loop).result(timeout=READY_TIMEOUT)
        return self.lab

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.lab.close(), self.loop).result(timeout=READY_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(root: int) -> float:
    """User and system CPU time so far of a live process and its descendants (NSD serves from a child), /proc."""
    ticks = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


@dataclass
class Timed:
    seconds: float
    returncode: int
    peak_tree_kb: int
    max_single_kb: int
    peak_processes: int
    cpu_seconds: float


def timed_process(command: list[str], env: dict[str, str], log: Path) -> Timed:
    """Run ``command``; wall time, exit code, peak RSS of its process tree (sampled) and of its largest process."""
    peak, most = 0, 0
    with log.open("wb") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak, most
            while not stop.wait(SAMPLE_EVERY):
                pids = _tree(process.pid)
                peak = max(peak, sum(_rss_kb(pid) for pid in pids))
                most = max(most, len(pids))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    # ru_maxrss of wait4: the largest of the process and its waited-for descendants, in KiB on Linux.
    # User and system time of the process and every descendant it waited for (the workers).
    return Timed(seconds, process.returncode, peak, usage.ru_maxrss, most, usage.ru_utime + usage.ru_stime)


def count_results(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Results per status, reasons of the results that could not run, and DNS timeouts among them."""
    document = json.loads(path.read_text())
    statuses: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    dns_lost = 0
    for domain in document["domains"]:
        for check in domain["checks"]:
            statuses[check["status"]] += 1
            if check["status"] in ("error", "timeout"):
                reason = check["reason"] or ""
                reasons[reason.split(":", 1)[0]] += 1
                if "dns" in reason.lower() and ("no answer" in reason or "timeout" in reason.lower()):
                    dns_lost += 1
    return statuses, reasons, dns_lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None, help="pass --workers W to diag (default: its own)")
    parser.add_argument("--timeout", type=float, default=10.0, help="diag's --timeout")
    parser.add_argument("--rrl-ratelimit", type=int, default=200)
    parser.add_argument("--rrl-slip", type=int, default=2)
    parser.add_argument("--no-anchor", action="store_true", help="do not run checkdmarc")
    parser.add_argument("--anchor-domains", type=int, default=None, help="checkdmarc on the first N domains only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    nsd = shutil.which("nsd", path="/usr/sbin:/usr/bin") or sys.exit("nsd is not installed")
    directory = Path(tempfile.mkdtemp(prefix="diag-scale-"))
    count = args.domains
    config = write_nsd(directory, count, args.rrl_ratelimit, args.rrl_slip)
    domains_file = directory / "domains.txt"
    domains_file.write_text("".join(f"{domain_name(i)}\n" for i in range(count)))
    server = subprocess.Popen([nsd, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        nsd_ready(time.monotonic() + READY_TIMEOUT)
        with LabThread() as lab:
            env = dict(os.environ, XDG_DATA_HOME=str(directory / "data"), XDG_CACHE_HOME=str(directory / "cache"))
            diag = [sys.executable, "-m", "diag", "check", "--domains-file", str(domains_file),
                    "--resolver", NSD_IP, "--smtp-port", str(lab.smtp_port), "--ca-file", str(lab.ca_file),
                    "--allow-private", "--timeout", f"{args.timeout:g}", "--json", str(directory / "out.json"),
                    "-q"]  # fmt: skip
            if args.workers is not None:
                diag += ["--workers", str(args.workers)]
            nsd_before = _cpu_seconds(server.pid)
            run = timed_process(diag, env, directory / "diag.log")
            nsd_cpu = _cpu_seconds(server.pid) - nsd_before  # NSD shares the two cores with diag
            blocks = (directory / "nsd.log").read_text().count("ratelimit block")  # during diag's run only
            anchor = None
            checkdmarc = shutil.which("checkdmarc", path=str(Path(sys.executable).parent)) or shutil.which("checkdmarc")
            if checkdmarc and not args.no_anchor:
                anchor_count = min(args.anchor_domains or count, count)
                anchor_file = directory / "anchor.txt"
                anchor_file.write_text("".join(f"{domain_name(i)}\n" for i in range(anchor_count)))
                command = [checkdmarc, str(anchor_file), "-n", NSD_IP, "-t", f"{args.timeout:g}",
                           "-o", str(directory / "checkdmarc.json")]  # fmt: skip
                anchor = (anchor_count, timed_process(command, env, directory / "checkdmarc.log"))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"{count} domains, NSD rrl-ratelimit {args.rrl_ratelimit} rrl-slip {args.rrl_slip}, "
          f"--timeout {args.timeout:g}, workers {args.workers if args.workers is not None else 'default'}")
    print(f"NSD ratelimit blocks logged: {blocks}; NSD's CPU during diag's run: {nsd_cpu:.1f} s "
          f"({nsd_cpu / count * 1000:.2f} ms per domain)")  # fmt: skip
    print(f"diag: exit {run.returncode}, {run.seconds:.2f} s, {count / run.seconds:.0f} domains/s, "
          f"peak RSS {run.peak_tree_kb / 1024:.0f} MB over up to {run.peak_processes} processes "
          f"(largest process {run.max_single_kb / 1024:.0f} MB), CPU {run.cpu_seconds:.1f} s "
          f"({run.cpu_seconds / count * 1000:.2f} ms per domain)")
    if (directory / "out.json").exists():
        statuses, reasons, dns_lost = count_results(directory / "out.json")
        print("results: " + ", ".join(f"{status} {n}" for status, n in sorted(statuses.items())))
        if reasons:
            print("could not run, by reason: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
        print(f"results lost to DNS timeouts: {dns_lost}")
    else:
        print(f"no JSON written; see {directory / 'diag.log'}")
    if anchor is not None:
        anchor_count, timed = anchor
        print(f"checkdmarc ({anchor_count} domains, SPF/DMARC/MX/NS lookups, no SMTP): exit {timed.returncode}, "
              f"{timed.seconds:.2f} s, {anchor_count / timed.seconds:.0f} domains/s, "
              f"peak RSS {timed.peak_tree_kb / 1024:.0f} MB")
        print(f"diag / checkdmarc (domains/s): {(count / run.seconds) / (anchor_count / timed.seconds):.1f}")
    if args.keep:
        print(f"kept: {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
