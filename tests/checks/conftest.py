"""One run of every check over every lab domain, shared by the checks' lab tests."""

from __future__ import annotations

import asyncio

import pytest

from checks import default_registry
from diag.lab.runner import Lab
from diag.lab.world import PURPOSES
from diag.model import DomainReport, Report
from diag.runner import run_checks

# One second per network operation: the tarpit and the blackhole each cost one timeout, once.
TIMEOUT = 1.0


@pytest.fixture(scope="session")
def lab_report(lab: Lab) -> Report:
    return asyncio.run(run_checks(list(PURPOSES), default_registry(), lab.run_options(timeout=TIMEOUT)))


@pytest.fixture
def domain_report(lab_report: Report):  # type: ignore[no-untyped-def]
    def get(domain: str) -> DomainReport:
        (report,) = [d for d in lab_report.domains if d.domain == domain]
        return report

    return get


# The mail authentication and transport policy checks (issue 14) and what they need, over every lab domain with
# a longer budget: they ask many DNS questions at once, which the lab's one DNS server answers while the mail
# hosts of the shared run above keep it busy.
POLICY_CHECKS = ("spf", "dkim", "dmarc", "tlsrpt", "mtasts", "dane", "dnssec")


@pytest.fixture(scope="session")
def policy_report(lab: Lab) -> Report:
    registry = default_registry()
    registry = registry.select([check_id for check_id in POLICY_CHECKS if check_id in registry])
    return asyncio.run(run_checks(list(PURPOSES), registry, lab.run_options(timeout=5.0)))


@pytest.fixture
def policy_domain(policy_report: Report):  # type: ignore[no-untyped-def]
    def get(domain: str) -> DomainReport:
        (report,) = [d for d in policy_report.domains if d.domain == domain]
        return report

    return get


def codes_of(report: DomainReport, check_id: str) -> list[str]:
    return [f.code for f in report.result(check_id).findings]
