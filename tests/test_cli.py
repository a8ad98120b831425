"""The command line, run as a user runs it: a real process, the embedded lab, exit codes per CONTRACT.md."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from diag.render.json import load_schema


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every diag process of these tests keeps its history and lock in a directory of its own."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    return home


def diag(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_lab_check_of_the_organization_passes() -> None:
    done = diag("check", "contoso.com", "--lab")
    assert done.returncode == 0, done.stderr
    assert "contoso.com: OK" in done.stdout
    assert "MX_OK contoso-com.mail.protection.outlook.com" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("domain", "code"),
    [("nomx.example", 1), ("expiring.example", 1), ("dangling.example", 2), ("refused.example", 2),
     ("expired.example", 2), ("servfail.example", 3), ("nullmx.example", 0)],
)
def test_exit_codes_follow_the_worst_result(domain: str, code: int) -> None:
    assert diag("check", domain, "--lab").returncode == code


def test_a_dns_server_that_loses_the_first_udp_answers_does_not_make_the_domain_unknown() -> None:
    # lossy.example's DNS drops the first two UDP queries for each name (as a rate-limiting server does): the
    # lookup is retried within --timeout and the domain is judged, not left unknown
    done = diag("check", "lossy.example", "--lab", "--timeout", "2")
    assert done.returncode == 0, done.stdout
    assert "  mx: completed (" in done.stdout and "MX_OK mx2.multi.example" in done.stdout


def test_a_dns_server_without_edns_does_not_make_the_mail_checks_fail_and_the_dnssec_checks_say_why() -> None:
    # noedns.example's DNS answers FORMERR (without OPT) to every query with EDNS, which a default run sends (DO
    # for the DNSSEC checks): each question is asked again without EDNS, so the mail checks pass as before
    done = diag("check", "noedns.example", "--lab")
    assert done.stderr == ""
    for passed in ("MX_OK mx.noedns.example", "SMTP_OK", "STARTTLS_OK", "CERT_OK", "SPF_OK", "DMARC_OK"):
        assert passed in done.stdout
    # and the DNSSEC checks say the server gave no DNSSEC material: no state, neither secure nor bogus
    no_material = "does not implement EDNS (it answered FORMERR to a query with EDNS)"
    assert done.stdout.count("DNSSEC_INDETERMINATE") == 3 and no_material in done.stdout  # MX, A, AAAA
    assert "DNSSEC_OK" not in done.stdout and "DNSSEC_BOGUS" not in done.stdout and "  mx: completed (" in done.stdout
    # a warning: DANE cannot be judged without DNSSEC material; no deferral is claimed (the resolver is at fault,
    # not the domain), and the fix says to ask another resolver
    assert "DANE_LOOKUP_FAILED" not in done.stdout and "could not be judged" in done.stdout
    assert "Run diag with a resolver that implements EDNS and answers for the whole DNS (--resolver)" in done.stdout
    assert done.returncode == 1


def test_a_domain_that_accepts_no_mail_is_ok_and_its_mail_checks_do_not_apply(tmp_path: Path) -> None:
    # Given a domain whose only MX is the null MX (RFC 7505: it accepts no mail)
    out = tmp_path / "result.json"
    done = diag("check", "nullmx.example", "--lab", "--json", str(out))
    # Then it is OK: the checks that need a mail host do not apply, which is not "could not run"
    assert done.returncode == 0, done.stderr
    assert "nullmx.example: OK" in done.stdout
    assert "  port25: not applicable (" in done.stdout and "): the domain accepts no mail (null MX)" in done.stdout
    document = json.loads(out.read_text())
    jsonschema.validate(document, load_schema())
    checks = {c["id"]: (c["status"], c["reason"]) for c in document["domains"][0]["checks"]}
    assert checks["port25"] == ("not_applicable", "the domain accepts no mail (null MX)")
    assert checks["certificate"][0] == checks["starttls"][0] == "not_applicable"
    assert (document["status"], document["exit_code"]) == ("ok", 0)
    # and a quiet run has nothing to say
    quiet = diag("check", "nullmx.example", "--lab", "-q")
    assert (quiet.returncode, quiet.stdout) == (0, "")


def test_json_output_matches_the_shipped_schema(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = diag("check", "contoso.com", "dangling.example", "servfail.example", "--lab", "--json", str(out))
    document = json.loads(out.read_text())
    jsonschema.validate(document, load_schema())
    assert document["schema"] == "diag.report/1"
    assert [d["domain"] for d in document["domains"]] == ["contoso.com", "dangling.example", "servfail.example"]
    statuses = {d["domain"]: d["status"] for d in document["domains"]}
    assert statuses == {"contoso.com": "ok", "dangling.example": "critical", "servfail.example": "unknown"}
    assert document["exit_code"] == done.returncode == 2
    mx, port25, _starttls, certificate, connectors, *_policy, e2e = document["domains"][0]["checks"]
    assert connectors["facts"]["routing"]["decision"]["connector"]["name"] == "Connector 2"
    # The lab's configured probes from or to contoso.com ran as the e2e check, and all four arrived.
    assert [f["code"] for f in e2e["findings"]] == ["E2E_DELIVERED"] * 4
    probes = {p["name"]: p for p in e2e["facts"]["probes"]}
    assert set(probes) == {"John to Sun", "Sun to John", "John to Bob", "Bob to John"}
    sun = probes["John to Sun"]
    assert ".diag-probe." in sun["message_id"] and sun["accepted_at"] <= sun["observed_at"]
    assert 0 <= sun["latency_s"] < 60 and [h["ip"] for h in sun["hops"]] == ["127.0.0.1", "127.0.10.10", "127.0.1.10"]
    assert sun["hops"][1]["protocol"] == "ESMTPS" and sun["hops"][1]["tls_version"] == "TLSv1.3"
    assert mx["facts"]["hosts"][0]["addresses"] == ["127.0.1.10"]
    session = port25["facts"]["probed"][0]["session"]
    assert session["greeting_code"] == 220 and session["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert all(session[k] >= 0 for k in ("connect_s", "banner_s", "ehlo_s", "tls_s"))
    leaf = certificate["facts"]["certificates"][0]["chain"][0]
    assert leaf["dns_names"][0] == "*.mail.protection.outlook.com" and len(leaf["sha256"]) == 64
    assert leaf["not_after"].endswith("Z") and leaf["key_type"] == "EC"
    failed = document["domains"][2]["checks"][0]
    assert failed["status"] == "error" and failed["reason"].startswith("dns: ")


def test_hostile_text_leaves_as_strict_json_and_enters_the_history(tmp_path: Path) -> None:
    # hostile.example replies with bytes that are not UTF-8: the JSON must still be strict (no lone surrogates,
    # which other languages' parsers refuse) and the history must take the run.
    out, history = tmp_path / "result.json", tmp_path / "history.db"
    done = diag("check", "hostile.example", "--lab", "--json", str(out), "--history", str(history))
    assert done.returncode == 2, done.stderr
    assert done.stderr == ""
    text = out.read_text(encoding="utf-8")
    assert "\\ud" not in text.lower()
    json.loads(text)
    assert "hostile.example" in diag("history", "hostile.example", "--history", str(history)).stdout


def test_json_to_stdout_is_only_json() -> None:
    done = diag("check", "contoso.com", "--lab", "--json", "-")
    jsonschema.validate(json.loads(done.stdout), load_schema())


def test_quiet_prints_nothing_when_all_is_well() -> None:
    done = diag("check", "contoso.com", "--lab", "-q")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_quiet_still_shows_problems() -> None:
    done = diag("check", "contoso.com", "dangling.example", "--lab", "-q")
    assert "MX_TARGET_NO_ADDRESS" in done.stdout and "contoso.com" not in done.stdout


def test_check_selection() -> None:
    done = diag("check", "contoso.com", "--lab", "--check", "mx", "--json", "-")
    assert [c["id"] for c in json.loads(done.stdout)["domains"][0]["checks"]] == ["mx"]


def test_policy_checks_are_selected_by_their_ids() -> None:
    # dane needs the MX hosts, their port-25 sessions and the dnssec check's states: they run too, and nothing else
    done = diag("check", "spflookups.example", "dane.example", "--lab", "--check", "spf", "--check", "dmarc",
                "--check", "dane", "--json", "-")  # fmt: skip
    document = json.loads(done.stdout)
    assert done.returncode == 2, done.stderr
    ran = [[c["id"] for c in d["checks"]] for d in document["domains"]]
    assert ran == [["mx", "port25", "spf", "dmarc", "dane", "dnssec"]] * 2
    codes = {d["domain"]: [f["code"] for c in d["checks"][2:5] for f in c["findings"]] for d in document["domains"]}
    assert codes == {"spflookups.example": ["SPF_TOO_MANY_LOOKUPS", "DMARC_OK", "DANE_NONE"],
                     "dane.example": ["SPF_OK", "DMARC_OK", "DANE_OK"]}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "no domain to check"),
        (["not a domain.example"], "not a valid domain name"),
        (["john@contoso.com"], "mail address"),
        (["contoso.com", "--timeout", "soon"], "--timeout"),
        (["contoso.com", "--frobnicate"], "No such option"),
        (["contoso.com", "--check", "nope"], "no such check"),
        (["contoso.com", "--ca-file", "/nonexistent/ca.pem"], "cannot read it"),
        (["contoso.com", "--ca-file", "/etc/hostname"], "no PEM certificate"),
        (["contoso.com", "--resolver", "dns.google"], "not an IP address"),
        (["contoso.com", "--resolver", "127.0.0.1:99999"], "port"),
        (["contoso.com", "--lab", "--resolver", "127.0.0.1"], "--lab sets"),
        (["contoso.com", "--lab", "--json", "/nonexistent/dir/out.json"], "does not exist"),
        (["contoso.com", "--timeout", "nan"], "--timeout nan: must be between 0.1 and 600 seconds"),
        (["contoso.com", "--deadline", "nan"], "--deadline nan: must be between 1 and 86400 seconds"),
        (["contoso.com", "--lab", "--notify-mail", "a@b.example", "--smtp-server", "127.0.0.1:²"], "port '²'"),
        (["contoso.com", "--lab", "--history", "/dev/null"], "not a regular file"),
        (["contoso.com", "--lab", "--notify-mail", "a@b.example", "--smtp-server", ":"], "HOST[:PORT]"),
    ],
)
def test_usage_errors_exit_3_with_one_line(args: list[str], fragment: str) -> None:
    done = diag("check", *args)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("diag: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["trusted", "crl", "version"])
def test_a_ca_file_cryptography_cannot_read_is_refused_before_the_run(tmp_path: Path, kind: str) -> None:
    """The certificate check reads the CAs with cryptography, which reads neither OpenSSL's own TRUSTED CERTIFICATE
    blocks (Fedora's trust bundle, which the ssl module loads), nor a file holding only a CRL, nor a certificate
    with a version X.509 does not have. Refused at once, in one line, not in the middle of the run."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    from diag.lab.pki import TestPKI

    der = TestPKI.create().root.public_bytes(Encoding.DER)
    if kind == "version":  # the version field of a v3 certificate, [0] EXPLICIT INTEGER 2, made 5
        assert b"\xa0\x03\x02\x01\x02" in der
        der = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x05", 1)
    label = {"trusted": "TRUSTED CERTIFICATE", "crl": "X509 CRL", "version": "CERTIFICATE"}[kind]
    body = base64.encodebytes(der).decode("ascii")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(f"-----BEGIN {label}-----\n{body}-----END {label}-----\n")
    done = diag("check", "contoso.com", "--resolver", "127.0.0.1:9", "--ca-file", str(ca_file))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"diag: error: --ca-file {str(ca_file)!r}: no PEM certificate in it (expected CA certificates)"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["relay", "--config", "examples/contoso.toml", "--role", "cloud", "--listen", "127.0.0.1:²"],
        ["relay", "--config", "examples/contoso.toml", "--role", "cloud", "--listen", "127.0.0.1:٣"],
        ["relay", "--config", "examples/contoso.toml", "--role", "cloud", "--reflect", "echo@probe.example"],
        ["lab", "serve", "--dir", "/etc/hostname/lab"],
    ],
)
def test_other_commands_refuse_bad_input_in_one_line(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "diag", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.startswith("diag: error: ") and len(done.stderr.splitlines()) == 1, done.stderr


def test_output_to_a_pipe_or_a_full_device_never_replaces_it_or_fails_with_a_traceback(tmp_path: Path) -> None:
    # --json into a FIFO that a collector reads: written into, and still a FIFO afterwards
    fifo = tmp_path / "collector"
    os.mkfifo(fifo)
    received: list[str] = []
    # A daemon thread: were the FIFO replaced, its reader would wait forever for a writer.
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    done = diag("check", "contoso.com", "--lab", "--no-history", "-q", "--json", str(fifo))
    assert done.returncode == 0, done.stderr
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received and json.loads(received[0])["schema"] == "diag.report/1"
    # stdout on a full device: one line, exit 3
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "diag", "lab", "domains"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3 and done.stderr == "diag: error: cannot write the output: No space left on device\n"


def test_a_reader_that_goes_away_early_is_not_an_error_on_stderr() -> None:
    # diag lab domains | head -c1: the pipe closes before diag writes
    process = subprocess.Popen([sys.executable, "-m", "diag", "lab", "domains"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    assert process.wait(timeout=60) == 3
    assert process.stderr.read() == b""
    process.stderr.close()


def test_a_client_certificate_that_cannot_be_parsed_is_one_line(tmp_path: Path) -> None:
    from diag.lab.pki import CertKind, TestPKI

    pem = tmp_path / "client.pem"
    pem.write_bytes(TestPKI.create().issue(["relay.contoso.com"], kind=CertKind.MALFORMED).chain_pem())
    done = diag("check", "contoso.com", "--lab", "--check", "connectors", "--client-cert", str(pem))
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1
    assert "the certificate cannot be parsed" in done.stderr


def test_an_ipv6_submission_server_is_an_address_not_a_name_to_look_up() -> None:
    done = diag("check", "contoso.com", "--lab", "--no-history", "-q", "--notify", "always",
                "--notify-mail", "it@contoso.com", "--smtp-server", "[::1]:9")  # fmt: skip
    assert done.returncode == 0
    (line,) = done.stderr.splitlines()
    assert line.startswith("diag: notification failed:") and "no address" not in line


def test_unknown_command_exits_3() -> None:
    done = diag("frobnicate")
    assert done.returncode == 3 and "No such command" in done.stderr


def test_version_and_help() -> None:
    assert diag("--version").stdout.startswith("diag, version ")
    assert "check" in diag("--help").stdout


def test_lab_domains_lists_every_lab_domain() -> None:
    done = diag("lab", "domains")
    assert "tarpit.example" in done.stdout and "accepts TCP, never greets" in done.stdout


@pytest.mark.parametrize(
    ("options", "code", "finding"),
    [
        ([], 1, "CERT_EXPIRING "),
        (["--cert-warn-days", "5"], 0, "CERT_OK"),
        (["--cert-crit-days", "12"], 2, "CERT_EXPIRING_SOON"),
    ],
)
def test_certificate_expiry_thresholds(options: list[str], code: int, finding: str) -> None:
    done = diag("check", "expiring.example", "--lab", *options)
    assert done.returncode == code and finding in done.stdout


def test_lab_serve_prints_the_options_that_reach_it(serve_lab: Callable[..., Any]) -> None:
    import shlex
    import signal

    serve, reach = serve_lab()
    try:
        assert reach[:3] == ["diag", "check", "DOMAIN"]
        done = diag("check", "contoso.com", "expired.example", *reach[3:])
        assert done.returncode == 2, shlex.join(reach)
        assert "contoso.com: OK" in done.stdout and "CERT_EXPIRED" in done.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=20)
    assert serve.returncode == 0 and "stopped" in err


def test_route_answers_like_the_setup_guide() -> None:
    done = diag("route", "john@fabrikam.com", "john@contoso.com", "john@sales.contoso.com", "sun@tailspintoys.com",
                "--lab")  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0] == "john@fabrikam.com -> Connector 1 (all-accepted-domains)"
    assert lines[2] == "john@contoso.com -> Connector 2 (exact contoso.com)"
    assert lines[4] == "john@sales.contoso.com -> Connector 3 (wildcard *.contoso.com)"
    assert "  smart hosts: sales-mail.contoso.com; TLS: DomainValidation, TlsDomain *.contoso.com" in lines
    assert "  documented order: Connector 1 (all-accepted-domains)" in lines
    assert "sun@tailspintoys.com -> no connector: delivered by DNS MX (mx)" in lines
    assert done.returncode == 1  # ROUTE_AMBIGUOUS is a warning


def test_route_json_matches_the_contract() -> None:
    done = diag("route", "john@sales.contoso.com", "--lab", "--json", "-")
    document = json.loads(done.stdout)
    jsonschema.validate(document, load_schema("routes"))
    (route,) = document["routes"]
    assert route["connector"] == "Connector 3" and route["rule"] == "wildcard"
    assert route["smart_hosts"] == ["sales-mail.contoso.com"] and route["tls_domain"] == "*.contoso.com"
    assert route["alternative"] == {"routing_order": "documented", "connector": "Connector 1",
                                    "rule": "all-accepted-domains"}  # fmt: skip
    assert [f["code"] for f in route["findings"]] == ["ROUTE_AMBIGUOUS"]
    documented = json.loads(diag("route", "john@sales.contoso.com", "--lab", "--routing-order", "documented",
                                 "--json", "-").stdout)  # fmt: skip
    assert documented["routes"][0]["connector"] == "Connector 1"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["route", "john@contoso.com"], "needs the organization's configuration"),
        (["route", "john", "--lab"], "domain"),
        (["route", "john@contoso.com", "--config", "/nonexistent.toml"], "cannot read it"),
        (["check", "contoso.com", "--check", "connectors"], "needs the organization's configuration"),
        (["check", "contoso.com", "--lab", "--client-cert", "/etc/hostname"], "no PEM certificate"),
        (["check", "contoso.com", "--lab", "--sender-ip", "mail.contoso.com"], "not an IP address"),
    ],
)
def test_connector_usage_errors(args: list[str], fragment: str) -> None:
    done = diag(*args)
    assert done.returncode == 3 and fragment in done.stderr and "Traceback" not in done.stderr


def test_config_check(tmp_path: Path) -> None:
    from diag.lab.world import EXAMPLE_CONFIG

    ok = diag("config", "check", str(EXAMPLE_CONFIG))
    assert ok.returncode == 0 and "4 accepted domains, 3 outbound and 1 inbound connectors" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[AcceptedDomain]]\nDomainName = "contoso.com"\n\n[[OutboundConnector]]\nName = "X"\n'
                   'RecipientDomains = ["contoso.com"]\nTlsSettings = "DomainValidaton"\nSmartHost = ["a"]\n')
    done = diag("config", "check", str(bad))
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert any(line.startswith(f"diag: error: {bad}:7: OutboundConnector[1].TlsSettings:") for line in lines)
    assert any("did you mean SmartHosts" in line for line in lines)


def test_config_import_round_trip(tmp_path: Path) -> None:
    exports = Path(__file__).parent / "data" / "exports"
    files = sorted(str(p) for p in exports.glob("*.json") if p.name.startswith("contoso-"))
    out = tmp_path / "imported.toml"
    done = diag("config", "import", *files, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert diag("config", "check", str(out)).returncode == 0
    routed = diag("route", "john@sales.contoso.com", "--config", str(out), "--json", "-")
    assert json.loads(routed.stdout)["routes"][0]["connector"] == "Connector 3"


def test_a_client_certificate_with_the_right_name_but_no_trusted_ca_is_an_error(tmp_path: Path) -> None:
    from diag.lab.pki import CertKind, TestPKI

    # Given --client-cert mail.contoso.com, which the inbound connector (*.contoso.com) names, but self-signed
    pem = tmp_path / "client.pem"
    pem.write_bytes(TestPKI.create().issue(["mail.contoso.com"], kind=CertKind.SELF_SIGNED).chain_pem())
    done = diag("check", "contoso.com", "--lab", "--check", "connectors", "--client-cert", str(pem))
    # Then the cloud would not accept it: critical, with the cloud's text, and no INBOUND_OK
    assert done.returncode == 2, done.stderr
    expected = (
        "ERROR INBOUND_CERT_INVALID contoso.com: The certificate of the on-premises server (mail.contoso.com, as given "
        "with --client-cert) is self-signed"
    )
    assert expected in done.stdout
    assert "cloud says: 550 5.7.64 TenantAttribution; Relay Access Denied" in done.stdout
    assert "INBOUND_OK" not in done.stdout


def test_client_certificate_outside_the_accepted_domains(tmp_path: Path) -> None:
    from diag.lab.pki import TestPKI

    pem = tmp_path / "client.pem"
    pem.write_bytes(TestPKI.create().issue(["relay.unrelated.example"]).chain_pem())
    done = diag("check", "contoso.com", "--lab", "--check", "connectors", "--client-cert", str(pem))
    assert done.returncode == 2
    assert "INBOUND_CERT_NOT_ACCEPTED_DOMAIN" in done.stdout and "RELAY_DENIED" in done.stdout
    assert "550 5.7.64 TenantAttribution; Relay Access Denied" in done.stdout


def test_dnssec_options_refuse_what_cannot_be_trusted(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("example. IN A 192.0.2.1\n")
    bad = diag("check", "contoso.com", "--trust-anchor", str(anchors), "--resolver", "127.0.0.1")
    remote = diag("check", "contoso.com", "--validating-resolver", "--resolver", "192.0.2.53")
    assert bad.returncode == remote.returncode == 3
    assert f"--trust-anchor '{anchors}': line 1: expected" in bad.stderr
    assert "--validating-resolver needs --resolver on this host" in remote.stderr
