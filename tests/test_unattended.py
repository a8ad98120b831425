"""Which job a run is (diag/unattended.py): the same job however it is spelled, another job when it checks or
writes something else."""

from __future__ import annotations

from pathlib import Path

import pytest

from diag.unattended import Job


def test_the_same_job_spelled_differently_has_one_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    one = Job.of("check", ["fabrikam.com", "contoso.com"], checks=["mx", "port25"], config=Path("org.toml"),
                 outputs={"--html": "out.html", "--json": None})  # fmt: skip
    two = Job.of("check", ["contoso.com", "fabrikam.com", "contoso.com"], checks=["port25", "mx"],
                 config=tmp_path / "org.toml", outputs={"--json": "-", "--html": tmp_path / "out.html"})  # fmt: skip
    assert one == two and one.key == two.key
    assert len(one.key) == 16 and int(one.key, 16) >= 0
    assert one.config == str(tmp_path / "org.toml")
    assert one.outputs == (("--html", str(tmp_path / "out.html")),)


@pytest.mark.parametrize(
    "other",
    [
        Job.of("check", ["fabrikam.com"]),
        Job.of("check", ["contoso.com", "fabrikam.com"]),
        Job.of("check", ["contoso.com"], checks=["mx"]),
        Job.of("check", ["contoso.com"], config=Path("/etc/diag/contoso.toml")),
        Job.of("check", ["contoso.com"], lab=True),
        Job.of("check", ["contoso.com"], outputs={"--prom": "/var/lib/node_exporter/diag.prom"}),
        Job.of("check", ["contoso.com"], outputs={"--history": "/var/lib/diag/other.db"}),
    ],
)
def test_another_domain_check_config_or_output_is_another_job(other: Job) -> None:
    assert Job.of("check", ["contoso.com"]).key != other.key


def test_a_job_describes_itself_in_a_few_words() -> None:
    assert Job.of("check", ["fabrikam.com", "contoso.com"]).describe() == "check contoso.com fabrikam.com"
    many = Job.of("check", [f"d{i:04}.example" for i in range(1000)])
    assert many.describe() == "check d0000.example d0001.example d0002.example and 997 more"
    assert Job.of("check", ["xn--mnchen-3ya.example"]).describe() == "check münchen.example (xn--mnchen-3ya.example)"
