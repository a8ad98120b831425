"""Shared fixtures of the probe tests: the lab's test PKI on disk (a CA file and server certificates) and probes.

The Dovecot IMAP server lives in tests/probe/watch/conftest.py: only the watcher tests need it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from diag.lab.pki import TestPKI
from diag.probe.message import Probe, build_probe

ProbeFactory = Callable[..., Probe]
Issuer = Callable[[str], tuple[Path, Path]]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPKI, Path]:
    return TestPKI.create(), tmp_path_factory.mktemp("probe-pki")


@pytest.fixture(scope="session")
def ca_file(pki_dir: tuple[TestPKI, Path]) -> Path:
    """The root CA certificate: what a client trusts (``--ca-file``)."""
    pki, directory = pki_dir
    return pki.write_root(directory / "root.pem")


@pytest.fixture(scope="session")
def issue(pki_dir: tuple[TestPKI, Path]) -> Issuer:
    """Issue a server certificate for a name; returns its chain and key files."""
    pki, directory = pki_dir

    def issue(name: str) -> tuple[Path, Path]:
        return pki.issue([name]).write(directory, name)

    return issue


@pytest.fixture
def make_probe() -> ProbeFactory:
    """Build a probe from john@contoso.com to sun@tailspintoys.com (keyword arguments override)."""

    def make(**options: object) -> Probe:
        values: dict[str, object] = {
            "run": "run-1",
            "name": "John to Sun",
            "sender": "john@contoso.com",
            "recipient": "sun@tailspintoys.com",
            "key": b"probe test key, 32 bytes long!!!",
            "now": datetime.now(UTC),
        }
        values.update(options)
        return build_probe(**values)  # type: ignore[arg-type]

    return make
