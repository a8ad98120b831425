"""Agreement of diag's policy checks with established tools, on the lab's policy domains (issue 14, item 3).

    sudo python bench/agreement.py [--output FILE]

Runs as root: it re-executes itself in a private network and mount namespace (``unshare -n -m``), so that the
lab can take the standard ports on loopback and the other tools need no port options they do not have:

* the lab's DNS server on 127.0.53.53:53 (checkdmarc's ``--nameserver`` takes addresses only, port 53);
* the mail hosts on port 25 (the lab's TLSA records are at ``_25._tcp``, and posttls-finger looks up
  ``_PORT._tcp`` for the port it connects to);
* the MTA-STS policy hosts on 443 (checkdmarc fetches ``https://mta-sts.DOMAIN/`` with no port; a forwarder on
  443 passes to the lab's HTTPS port);
* unbound on 127.0.0.1:53 as a validating resolver with the lab's trust anchors, forwarding each lab zone to
  the lab's DNS server (which is authoritative and sets no AD bit); /etc/resolv.conf, bind-mounted in the
  namespace, names it with ``options trust-ad`` (glibc passes the AD bit on only then). posttls-finger's DANE
  needs the AD bit; checkdmarc's MTA-STS fetch (requests, the system resolver) uses it too.

Each tool gets: diag ``diag check D --json -`` with the lab's options (``Lab.check_option_text``: resolver, SMTP
port, CA file, trust anchors, HTTPS port); checkdmarc ``checkdmarc D -f json -n 127.0.53.53`` with
``REQUESTS_CA_BUNDLE`` set to the lab's CA (for the MTA-STS policy fetch); posttls-finger ``posttls-finger -c
-l dane -F CA D`` on the DANE domains. The table sets what each tool says side by side and marks a row where
they disagree (``!``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from diag.lab.policy import POLICY_PURPOSES
from diag.lab.runner import Lab
from diag.lab.world import DNS_IP

NAMESPACE_MARK = "DIAG_AGREEMENT_NAMESPACE"
POSTTLS_FINGER = "/usr/sbin/posttls-finger"
UNBOUND = "/usr/sbin/unbound"
RESOLVER_IP = "127.0.0.1"
DOMAINS = ("contoso.com", "fabrikam.com", *POLICY_PURPOSES)
DANE_DOMAINS = ("contoso.com", "dane.example", "danebad.example", "unsigned.example", "badsig.example",
                "forgedsig.example", "nsec3.example", "tlsabad.nsec3.example", "nsec3bad.example",
                "insecure.optout.example", "cnamesigned.example", "cnameunsigned.example", "tlsafail.example",
                "mail.wild.nsec3.example")  # fmt: skip
BIN = Path(sys.executable).parent


async def _forward(listen_ip: str, listen_port: int, target: tuple[str, int]) -> asyncio.Server:
    """A TCP forwarder from ``listen_ip:listen_port`` to ``target`` (the MTA-STS hosts on 443)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(handle, listen_ip, listen_port)


def _unbound_config(lab: Lab, directory: Path) -> Path:
    zones = "".join(f'stub-zone:\n  name: "{zone}."\n  stub-addr: {DNS_IP}@53\n' for zone in lab.world.zones)
    config = directory / "unbound.conf"
    config.write_text(
        "server:\n"
        f"  interface: {RESOLVER_IP}\n  port: 53\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n"
        f"  directory: \"{directory}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"{directory}/unbound.log\"\n"
        "  verbosity: 1\n  do-not-query-localhost: no\n  qname-minimisation: no\n  do-ip6: no\n"
        f"  trust-anchor-file: \"{lab.anchor_file}\"\n  module-config: \"validator iterator\"\n"
        "  val-log-level: 2\n"
        f"{zones}",
        encoding="ascii",
    )
    return config


async def _run(argv: list[str], env: dict[str, str] | None = None, limit: float = 60.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), limit)
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _wait_for_resolver() -> None:
    import dns.asyncquery
    import dns.message

    for _attempt in range(50):
        try:
            await dns.asyncquery.udp(dns.message.make_query("contoso.com.", "SOA"), RESOLVER_IP, timeout=0.5)
            return
        except (OSError, dns.exception.Timeout):
            await asyncio.sleep(0.2)
    raise RuntimeError("unbound did not answer")


def diag_summary(document: dict[str, object]) -> dict[str, list[str]]:
    """diag's finding codes by check, for one domain's JSON (policy checks only)."""
    domains = document["domains"]
    assert isinstance(domains, list)
    codes: dict[str, list[str]] = {}
    for check in domains[0]["checks"]:
        found = [finding["code"] for finding in check["findings"]]
        if check["status"] != "completed":
            found.append(f"<{check['status']}>")
        codes[check["id"]] = found
    return codes


def checkdmarc_summary(result: dict[str, object]) -> dict[str, str]:
    """checkdmarc's verdicts: SPF valid and lookups or error, DMARC policy or error, MTA-STS, TLS-RPT."""

    def part(name: str) -> dict[str, object]:
        value = result.get(name) or {}
        assert isinstance(value, dict)
        return value

    def verdict(name: str, describe: str) -> str:
        value = part(name)
        if value.get("error"):
            return f"error: {value['error']}"
        text = describe
        warnings = value.get("warnings") or []
        assert isinstance(warnings, list)
        return text + "".join(f"; warning: {w}" for w in warnings)

    spf = part("spf")
    dmarc = part("dmarc")
    tags = dmarc.get("tags") or {}
    assert isinstance(tags, dict)
    policy = tags.get("p", {}).get("value") if isinstance(tags.get("p"), dict) else None
    sts = part("mta_sts")
    sts_policy = sts.get("policy") or {}
    assert isinstance(sts_policy, dict)
    mx_warnings = part("mx").get("warnings") or []
    assert isinstance(mx_warnings, list)
    return {
        "spf": verdict("spf", f"valid, {spf.get('dns_lookups')} lookups" if spf.get("valid") else "not valid"),
        "dmarc": verdict("dmarc", f"p={policy}" if dmarc.get("valid") else "not valid"),
        "mta_sts": verdict("mta_sts", f"mode {sts_policy.get('mode')}, mx {sts_policy.get('mx')}"
                           if sts.get("valid") else "not valid"),
        "tlsrpt": verdict("smtp_tls_reporting", "valid" if part("smtp_tls_reporting").get("valid") else "not valid"),
        "mx": "; ".join(str(w) for w in mx_warnings) or "no warnings",
        "dnssec": str(result.get("dnssec")),
    }  # fmt: skip


def finger_verdict(output: str) -> str:
    """posttls-finger's verdict: the kind of TLS connection it made, or why it made none."""
    basis = ("DANE match" if "Matched DANE" in output else "DANE: no matching TLSA" if "no matching DANE" in output
             else "CA and name, TLSA not used" if "matched peername" in output else "")  # fmt: skip
    for line in output.splitlines():
        for kind in ("Verified", "Trusted", "Untrusted", "Anonymous"):
            if f"{kind} TLS connection established" in line:
                return f"{kind} ({basis})" if basis else kind
    for line in output.splitlines():
        if "posttls-finger: " in line and ("TLSA" in line or "DNSSEC" in line or "MX" in line or "fail" in line):
            return line.split("posttls-finger: ", 1)[1].strip()
    return output.strip().splitlines()[-1] if output.strip() else "(no output)"


async def _tlsa_via_resolver(domain: str) -> str:
    """What the validating resolver answers for the TLSA record of the domain's MX host: rcode and AD bit."""
    import dns.asyncquery
    import dns.flags
    import dns.message
    import dns.rcode

    query = dns.message.make_query(f"_25._tcp.mx.{domain}." if domain.endswith(".example") else
                                   "_25._tcp.contoso-com.mail.protection.outlook.com.", "TLSA", want_dnssec=True)
    query.flags |= dns.flags.AD
    answer = await dns.asyncquery.udp(query, RESOLVER_IP, timeout=5)
    ad = "1" if answer.flags & dns.flags.AD else "0"
    return f"{dns.rcode.to_text(answer.rcode())}, AD={ad}, {len(answer.answer)} RRsets"


async def collect(directory: Path, raw: dict[str, object]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    async with Lab(smtp_port=25, dns_port=53) as lab:
        forwarders = [await _forward(ip, 443, (ip, lab.https_port)) for _name, ip, _policy in lab.world.sts]
        unbound = await asyncio.create_subprocess_exec(UNBOUND, "-d", "-c", str(_unbound_config(lab, directory)))
        try:
            await _wait_for_resolver()
            resolv = directory / "resolv.conf"
            resolv.write_text(f"nameserver {RESOLVER_IP}\noptions trust-ad\n", encoding="ascii")
            await asyncio.to_thread(subprocess.run, ["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
            checkdmarc_env = {**os.environ, "REQUESTS_CA_BUNDLE": str(lab.ca_file)}
            for domain in DOMAINS:
                _code, out, err = await _run(
                    [str(BIN / "diag"), "check", domain, "--json", "-", *lab.check_option_text().split()]
                )
                diag = diag_summary(json.loads(out)) if out.strip() else {"error": [err.strip()]}
                _code, out, err = await _run([str(BIN / "checkdmarc"), domain, "-f", "json", "-n", DNS_IP],
                                             env=checkdmarc_env)  # fmt: skip
                checkdmarc = checkdmarc_summary(json.loads(out)) if out.strip() else {"error": err.strip()}
                finger = None
                if domain in DANE_DOMAINS:
                    _code, out, err = await _run(
                        [POSTTLS_FINGER, "-c", "-l", "dane", "-o", "dnssec_probe=ns:example", "-F", str(lab.ca_file),
                         domain], limit=30,
                    )
                    finger = finger_verdict(out + err)
                    raw[domain] = {"posttls-finger": out + err, "unbound TLSA": await _tlsa_via_resolver(domain)}
                rows.append({"domain": domain, "diag": diag, "checkdmarc": checkdmarc, "posttls-finger": finger})
        finally:
            unbound.terminate()
            await unbound.wait()
            for server in forwarders:
                server.close()
    return rows


# Per aspect: diag's check, the code that means "fine", and where the other tool's verdict is.
ASPECTS = (("SPF", "spf", "SPF_OK", "spf"), ("DMARC", "dmarc", "DMARC_OK", "dmarc"),
           ("MTA-STS", "mtasts", "MTASTS_OK", "mta_sts"), ("TLS-RPT", "tlsrpt", "TLSRPT_OK", "tlsrpt"),
           ("DNSSEC", "dnssec", "DNSSEC_OK", "dnssec"), ("DANE", "dane", "DANE_OK", "posttls-finger"))  # fmt: skip


def _other_fine(row: dict[str, object], aspect: str, key: str) -> bool | None:
    """Whether checkdmarc found nothing wrong; None: the tool was not run. (DANE is compared by kind.)"""
    checkdmarc = row["checkdmarc"]
    assert isinstance(checkdmarc, dict)
    text = str(checkdmarc.get(key, ""))
    if key == "dnssec":
        return text == "True"
    fine = not text.startswith("error") and "warning" not in text
    if key == "mta_sts":  # checkdmarc reports MX hosts outside the policy's patterns with the MX hosts
        fine = fine and "MTA-STS" not in str(checkdmarc.get("mx", ""))
    return fine


# DANE, by what a DANE sender does: deliver authenticated by a TLSA match, refuse a host whose TLSA records
# match nothing, defer because an answer it needs is bogus or missing, or deliver without DANE.
_DANE_KINDS = {
    "DANE_OK": "match", "DANE_MISMATCH": "mismatch", "DANE_MX_BOGUS": "defer", "DANE_TLSA_BOGUS": "defer",
    "DANE_LOOKUP_FAILED": "defer", "DANE_NONE": "no DANE", "DANE_TLSA_INSECURE": "no DANE",
}  # fmt: skip


def _dane_kind(codes: list[str]) -> str:
    kinds = {_DANE_KINDS.get(code, code) for code in codes}
    for kind in ("defer", "mismatch", "match", "no DANE"):
        if kind in kinds:
            return kind
    return " ".join(sorted(kinds))


def _finger_kind(verdict: str) -> str:
    if "DANE match" in verdict:
        return "match"
    if "no matching TLSA" in verdict:
        return "mismatch"
    if "try again" in verdict or "lookup error" in verdict or "lookup failed" in verdict:
        return "defer"
    return "no DANE"


def table(rows: list[dict[str, object]]) -> str:
    """One line per domain and aspect: diag's codes, the other tool's verdict, and ``!`` where they disagree."""
    lines = ["| domain | aspect | diag | other tool | agree |", "|---|---|---|---|---|"]
    for row in rows:
        diag = row["diag"]
        checkdmarc = row["checkdmarc"]
        assert isinstance(diag, dict) and isinstance(checkdmarc, dict)
        for aspect, check, fine_code, key in ASPECTS:
            codes = sorted(set(diag.get(check, [])))
            if key == "posttls-finger":
                verdict = row["posttls-finger"]
                if verdict is None:
                    continue
                agree = "yes" if _dane_kind(codes) == _finger_kind(str(verdict)) else "**!**"
            else:
                verdict = checkdmarc.get(key)
                if key == "mta_sts" and "MTA-STS" in str(checkdmarc.get("mx", "")):
                    verdict = f"{verdict}; mx: {checkdmarc['mx']}"
                agree = "yes" if (codes == [fine_code]) == _other_fine(row, aspect, key) else "**!**"
            tool = "posttls-finger" if key == "posttls-finger" else "checkdmarc"
            text = " ".join(str(verdict).replace("|", "/").split())
            lines.append(f"| {row['domain']} | {aspect} | {' '.join(codes)} | {tool}: {text} | {agree} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="also write the JSON rows here")
    args = parser.parse_args()
    if os.environ.get(NAMESPACE_MARK) != "1":
        if os.geteuid() != 0:
            sys.exit("bench/agreement.py runs as root (it takes ports 25, 53 and 443 in a namespace of its own)")
        for tool in (POSTTLS_FINGER, UNBOUND, shutil.which("unshare"), str(BIN / "checkdmarc")):
            if not tool or not os.path.exists(tool):
                sys.exit(f"missing: {tool} (apt-get install postfix unbound; pip install checkdmarc)")
        env = {**os.environ, NAMESPACE_MARK: "1"}
        os.execvpe("unshare", ["unshare", "-n", "-m", "--propagation", "private", sys.executable, *sys.argv], env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory(prefix="diag-agreement-") as directory:
        raw: dict[str, object] = {}
        rows = asyncio.run(collect(Path(directory), raw))
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "raw": raw}, indent=2) + "\n", encoding="utf-8")
    print(table(rows), end="")


if __name__ == "__main__":
    main()
