"""What a diag process imports (issue 13, item 4): ``diag --help`` answers without the network stack, and a check
run loads only what it uses. Structural, never timed: the module names come from a real process, from
``python -X importtime`` (every ``import`` statement, lazy ones included, until the process ends) or from its
``sys.modules`` at exit (also what ``importlib.import_module`` loads, as the checks are). The time it takes is
measured by bench/startup.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diag.lab.runner import Lab

# The network stack and the renderers: none of them is needed to print help or the version.
HEAVY = ("asyncio", "ssl", "dns", "cryptography", "rich", "jinja2", "aiosmtplib", "sqlite3")


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module the ``diag`` process imported, from start to exit."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "diag", *args], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert done.returncode in (0, 1, 2), done.stderr
    modules = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "diag.cli" in modules
    return modules


def loaded(*args: str, env: dict[str, str], at_exit: Path) -> set[str]:
    """Every module in the ``sys.modules`` of a ``diag`` process as it exits."""
    keep = f"import atexit, sys; atexit.register(lambda: open({str(at_exit)!r}, 'w').write(' '.join(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", f"{keep}; from diag.cli import main; main(sys.argv[1:])", *args], capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert done.returncode in (0, 1, 2), done.stderr
    modules = set(at_exit.read_text().split())
    assert {"diag.cli", "checks.mx"} <= modules
    return modules


def packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check", "--help"], ["lab", "--help"]])
def test_help_and_version_import_no_network_stack_and_no_renderer(args: list[str]) -> None:
    assert packages(imported(*args)).isdisjoint(HEAVY)


def test_help_does_not_import_pathlib() -> None:
    """pathlib (with urllib.parse and ipaddress) comes with the commands that take a path, not with every start.
    Without site (-S): an editable install's import hook loads pathlib itself; an installed diag has none."""
    import site

    here = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(here), *site.getsitepackages()])
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import atexit, sys; "
         "atexit.register(lambda: print(' '.join(sys.modules), file=sys.stderr)); "
         "import diag.cli; sys.argv = ['diag', '--help']; diag.cli.main()"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "click" in done.stderr.split() and "pathlib" not in done.stderr.split()


def test_a_check_run_into_a_pipe_loads_neither_rich_nor_jinja2_nor_dns_ddr(lab: Lab, tmp_path: Path) -> None:
    # Given a check of a healthy domain whose view goes into a pipe (as from cron), with the history kept
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    modules = imported("check", "contoso.com", *lab.option_text().split(), env=env)
    # Then it used the network stack and examined a certificate
    assert {"asyncio", "ssl", "dns", "aiosmtplib", "cryptography", "sqlite3"} <= packages(modules)
    # But the terminal table (rich) and the HTML report (jinja2) were never loaded, nor dnspython's discovery of
    # designated resolvers (dns._ddr, which comes with dns.resolver), nor the mail and HTTP of notifications
    assert packages(modules).isdisjoint({"rich", "jinja2"})
    assert {"dns._ddr", "dns.resolver", "dns.asyncresolver", "diag.notify", "urllib.request"}.isdisjoint(modules)


# The end-to-end probes' machinery: the sender, the watchers (IMAP, Maildir), the judge and the parsers it uses.
PROBING = ("diag.probe.run", "diag.probe.judge", "diag.probe.sender", "diag.probe.message", "diag.probe.received",
           "diag.probe.pace", "diag.probe.watch", "imaplib", "mailbox")  # fmt: skip


def _probing(modules: set[str]) -> set[str]:
    return {name for name in modules if name in PROBING or name.startswith("diag.probe.watch.")}


def test_a_check_run_without_config_loads_no_probe_no_configuration_and_no_unasked_output(
    lab: Lab, tmp_path: Path
) -> None:
    # Given a check of a healthy domain without --config (no connectors, no [[Probe]] tables), into a pipe
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    modules = loaded("check", "contoso.com", *lab.check_option_text().split(), env=env, at_exit=tmp_path / "m")
    # Then the checks that need a configuration were not imported, nor the organization's model and its routing,
    # nor the end-to-end probes' sender, watchers and judge (the e2e check's facts included)
    assert {"checks.connectors", "checks.dkim", "checks.e2e", "diag.config", "diag.config.model", "diag.routing",
            "diag.probe.facts", "tomllib"}.isdisjoint(modules)  # fmt: skip
    assert _probing(modules) == set()
    # Nor the outputs it did not ask for: notifications, the HTML report, the monitoring formats. (The email
    # package itself is loaded all the same: aiosmtplib and dnspython's importlib.metadata import it.)
    assert {"diag.notify", "diag.render.html", "diag.render.monitoring", "jinja2", "rich"}.isdisjoint(modules)


def test_a_check_run_with_an_html_report_reads_the_e2e_facts_type_without_the_probe_machinery(
    lab: Lab, tmp_path: Path
) -> None:
    # Given a check without --config that writes the HTML report, which asks every check how it shows its facts
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    html = tmp_path / "report.html"
    modules = loaded("check", "contoso.com", *lab.check_option_text().split(), "--html", str(html), env=env,
                     at_exit=tmp_path / "m")  # fmt: skip
    # Then the e2e check and its facts were loaded, but not what sends and watches probes
    assert html.is_file() and {"diag.render.html", "checks.e2e", "diag.probe.facts"} <= modules
    assert _probing(modules) == set()


def test_a_run_of_the_mail_checks_loads_no_other_check_and_no_dnssec_validation(lab: Lab, tmp_path: Path) -> None:
    # Given a run of the four mail checks only (--check), with the lab's trust anchors given all the same
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    mail = [part for check in ("mx", "port25", "starttls", "certificate") for part in ("--check", check)]
    modules = loaded("check", "contoso.com", *lab.check_option_text().split(), *mail, env=env,
                     at_exit=tmp_path / "m")  # fmt: skip
    # Then the modules of the checks not asked for were not imported, nor DNSSEC validation (dnspython's included)
    checks = {name for name in modules if name.startswith("checks.")}
    assert checks == {"checks.mx", "checks.port25", "checks.starttls", "checks.certificate"}
    assert {"diag.policy.dnssec", "diag.policy.denial", "diag.policy.spf", "dns.dnssec"}.isdisjoint(modules)


@pytest.mark.parametrize("configured", [False, True])
def test_the_way_to_a_run_s_first_packet_loads_neither_cryptography_x509_nor_aiosmtplib(configured: bool) -> None:
    """What a check run imports before it starts: the command, the checks (with a configuration, its checks and
    the configuration's model too), the engine and the outputs. cryptography's x509 and aiosmtplib take about 60
    ms to import and the first packet needs neither: the run imports them in a thread while its first questions
    are in flight (issue 13, item 3; ``RunContext.imports_for``), aiosmtplib only where it opens SMTP sessions.
    (``--ca-file`` is checked with cryptography before the run, as the certificate check reads it: only those runs
    pay it.)"""
    code = (
        "import sys; import diag.cli, diag.config, diag.context, diag.runner, diag.results, diag.unattended, "
        f"diag.workers; from checks import default_registry; registry = default_registry(configured={configured}); "
        "print(' '.join(diag.context.RunContext.imports_for(registry, own_sessions=True))); "
        "print(' '.join(diag.context.RunContext.imports_for(registry, own_sessions=False))); "
        "print(' '.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lazy, in_a_worker, modules = done.stdout.splitlines()
    assert lazy.split() == ["diag.net.smtp", "diag.net.tls"]  # the first session comes before the first chain
    assert in_a_worker.split() == ["diag.net.tls"]  # a worker's sessions are its parent's: no SMTP client
    assert {"checks.certificate", "checks.dane", "checks.port25", "diag.policy.dane"} <= set(modules.split())
    assert ("checks.connectors" in modules.split()) is configured
    assert {"cryptography.x509", "aiosmtplib", "diag.net.tls", "diag.net.smtp"}.isdisjoint(modules.split())


@pytest.mark.parametrize("own_sessions", [True, False])
def test_a_run_imports_the_smtp_client_only_where_it_opens_the_sessions_itself(own_sessions: bool) -> None:
    """A worker process's run gets its SMTP sessions from its parent (a session source): its import thread leaves
    aiosmtplib alone, while a run that opens them imports it."""
    source = "None" if own_sessions else "lambda ip, port, name: None"
    code = (
        "import sys, threading; from diag.context import RunContext, RunOptions; from checks import default_registry; "
        f"RunContext.of(RunOptions(), default_registry(), sessions={source}); "
        "[t.join(60) for t in threading.enumerate() if t.name == 'diag-imports']; "
        "print('aiosmtplib' in sys.modules, 'cryptography.x509' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(own_sessions), "True"]


def test_dnspython_s_https_and_quic_clients_are_not_imported_even_where_installed(tmp_path: Path) -> None:
    """dnspython imports its DNS-over-HTTPS client (httpx2 and its kin) and its DNS-over-QUIC client (aioquic) at
    import time wherever their packages are installed, as beside checkdmarc; diag uses neither."""
    import dns._features

    # Given every package of dnspython's "doh" and "doq" features "installed" (their metadata at the versions it
    # asks for), each of whose modules (the names of dnspython 2.6 to 2.9) fails the process if it is imported
    wanted = [*dns._features._requirements["doh"], *dns._features._requirements["doq"]]
    for requirement in wanted:
        name, _, version = requirement.partition(">=")
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for module in ("httpx", "httpx2", "httpcore", "httpcore2", "h2", "anyio", "aioquic"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(f"raise SystemExit('{module} was imported')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    # When a process imports diag's resolver and dnspython's asyncio backend, as a run does
    code = (
        "import dns._features, diag.net.dns, dns.asyncbackend; dns.asyncbackend.get_backend('asyncio'); "
        f"import dns.quic; print(all(dns._features._version_check(r) for r in {wanted!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    # Then none of those clients was imported, although that dnspython sees every one of their packages
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
