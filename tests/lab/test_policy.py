"""The lab's policy records and DNSSEC setup: data checks, and the running lab's trust anchors."""

from __future__ import annotations

from collections import Counter

from diag.lab.policy import POLICY_PURPOSES
from diag.lab.runner import Lab
from diag.lab.world import PURPOSES, default_world
from diag.policy.dnssec import parse_anchors


def test_every_policy_domain_is_a_lab_domain_with_one_spf_and_one_dmarc_record_at_most() -> None:
    world = default_world()
    assert set(POLICY_PURPOSES) <= set(PURPOSES)
    spf = Counter(r.name for r in world.records if r.rdtype == "TXT" for t in r.rdata if t.startswith("v=spf1"))
    dmarc = Counter(r.name for r in world.records if r.rdtype == "TXT" for t in r.rdata if t.startswith("v=DMARC1"))
    assert max(spf.values()) == 1 and max(dmarc.values()) == 1
    # every lab domain but the one without policy records says who may send for it (itself or by a wildcard)
    assert {d for d in PURPOSES if d not in spf and f"*.{d.split('.', 1)[1]}" not in spf} == {"nopolicy.example"}


def test_every_zone_but_the_insecure_delegations_is_signed() -> None:
    world = default_world()
    # (noedns.example: its server does not implement EDNS, so it could not serve a signed zone)
    assert set(world.zones) - set(world.signed) == {"unsigned.example", "insecure.optout.example", "noedns.example"}
    assert set(world.expired) | set(world.forged) | set(world.nsec3) <= set(world.signed)
    assert set(world.opt_out) | set(world.broken_denial) <= set(world.nsec3)


def test_the_trust_anchors_are_the_top_zones_keys_and_reach_another_process(lab: Lab) -> None:
    anchors = parse_anchors(lab.anchor_file.read_text())
    assert {a.zone.rstrip(".") for a in anchors} == {a.zone for a in lab.trust_anchors} == {
        "contoso.com", "fabrikam.com", "contoso.onmicrosoft.com", "outlook.com", "tailspintoys.com", "example"}
    assert lab.check_option_text().endswith(f"--trust-anchor {lab.anchor_file} --https-port {lab.https_port}")
