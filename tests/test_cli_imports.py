"""What a diag process imports (issue 13, item 4): ``diag --help`` answers without the network stack, and a check
run loads only what it uses. Structural, never timed: the module names come from ``python -X importtime`` of a
real process, which lists every import, lazy ones included, until the process ends. The time it takes is
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


def packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check", "--help"], ["lab", "--help"]])
def test_help_and_version_import_no_network_stack_and_no_renderer(args: list[str]) -> None:
    assert packages(imported(*args)).isdisjoint(HEAVY)


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
