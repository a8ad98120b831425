"""MTA-STS (RFC 8461): the ``_mta-sts`` record, the policy fetched over HTTPS from ``mta-sts.<domain>`` with full
certificate validation, its mode and ``max_age``, and every MX host matched by one of its ``mx:`` patterns.

The policy host is resolved with the run's resolver and, like the MX hosts, fetched from only when its addresses
are public unless ``--allow-private`` (security-cases PC-20). The policy is fetched from every address of the
host (:func:`diag.policy.mtasts.fetch_policy`): senders try them in the order DNS gives and move on when one
fails, so the policy is the first address's that serves it, and each address that does not is reported. A
sender that cannot fetch a valid policy treats the domain as having none (§3.3), so every fetch and policy
problem leaves the domain without MTA-STS protection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from checks.mx import MxFacts
from diag import evidence as ev
from diag.context import CheckContext, is_public
from diag.evidence import Evidence, Observed, Section
from diag.frozen import frozen
from diag.model import Finding, Severity
from diag.net.dns import DnsStatus
from diag.net.https import HttpsFacts
from diag.policy.lookup import drive, shown
from diag.policy.mtasts import (
    FetchProblem,
    MxCoverage,
    StsMode,
    StsPolicy,
    StsTxtFacts,
    TxtStatus,
    coverage,
    discover_txt,
    fetch_policy,
    judge_fetch,
    parse_policy,
)
from diag.registry import Check, Outcome

__all__ = ["CHECK", "MtaStsFacts", "MtaStsView", "StsHostRow", "assess", "probe", "view"]

_SHORT_MAX_AGE = 86400  # RFC 8461 §3.2 suggests weeks; under a day, a policy barely outlives a DNS outage


@frozen
class MtaStsFacts:
    """The record, the fetch and the policy, and the MX coverage.

    Attributes:
        record: the ``_mta-sts`` lookup.
        fetch: the HTTPS answer judged (None when the record was not usable, or the host not fetched from): the
            first of the policy host's addresses that serves the policy, else its first address's.
        not_fetched: why the policy host was left alone (an address is not public), "" otherwise.
        policy: the parsed policy (None without a usable answer).
        coverage: each MX host with the pattern matching it.
        others: the answers of the policy host's other addresses, IPv4 then IPv6, each in ascending order.
    """

    record: StsTxtFacts
    fetch: HttpsFacts | None = None
    not_fetched: str = ""
    policy: StsPolicy | None = None
    coverage: tuple[MxCoverage, ...] = ()
    others: tuple[HttpsFacts, ...] = ()


def _fault(fetch: HttpsFacts, problem: FetchProblem) -> str:
    """What is wrong with an answer that is no policy, in words."""
    return {
        FetchProblem.FETCH_FAILED: f"{fetch.error.value if fetch.error else 'failed'}: {shown(fetch.detail)}",
        FetchProblem.REDIRECT: f"it answers with a redirect (HTTP {fetch.status}) to {shown(fetch.location or '?')}, "
                               "which senders must not follow",
        FetchProblem.NOT_OK: f"it answers HTTP {fetch.status}",
        FetchProblem.NOT_TEXT_PLAIN: f"it is served as {shown(fetch.content_type or 'no media type')}, not text/plain",
    }[problem]  # fmt: skip


def _address_failed(domain: str, failed: HttpsFacts, problem: FetchProblem, served: HttpsFacts) -> Finding:
    host = f"mta-sts.{domain}"
    return CHECK.finding(
        "MTASTS_ADDRESS_FAILED", f"{host} [{failed.ip}]",
        f"The MTA-STS policy host {host} does not serve the policy at {failed.ip} ({_fault(failed, problem)}), "
        f"only at {served.ip}: a sender that tries {failed.ip} first (DNS gives the addresses in any order) moves "
        f"on to another address after a failed connection or TLS handshake, but one that reaches only {failed.ip}, "
        f"or gets an answer there, has no policy for {domain} (RFC 8461 §3.3).",
        f"Make every address of {host} serve the policy, or remove {failed.ip} from its address records.",
    )  # fmt: skip


def _terms(policy: StsPolicy) -> tuple[object, ...]:
    """What a sender takes from a policy: its mode, mx patterns (in any order, once each) and max_age; nothing from
    an invalid one (senders ignore it, RFC 8461 §3.2), so any two invalid policies are alike."""
    if not policy.valid:
        return (False,)
    return (True, policy.mode, tuple(sorted(set(policy.mx))), policy.max_age)


def _summary(policy: StsPolicy) -> str:
    if not policy.valid:
        return "an invalid policy"
    return f"mode {policy.mode}, max_age {policy.max_age}, mx {', '.join(policy.mx) or 'none'}"


def _serves_another(
    domain: str, other: HttpsFacts, theirs: StsPolicy, served: HttpsFacts, policy: StsPolicy
) -> Finding:
    host = f"mta-sts.{domain}"
    return CHECK.finding(
        "MTASTS_ADDRESS_FAILED", f"{host} [{other.ip}]",
        f"The MTA-STS policy host {host} serves another policy at {other.ip} ({_summary(theirs)}) "
        f"than at {served.ip} ({_summary(policy)}): a sender applies whichever address it reached (RFC 8461 §3.3), "
        f"so {domain}'s mail is protected one way or the other by chance.",
        f"Serve the same policy file at every address of {host}.",
    )  # fmt: skip


def assess(facts: MtaStsFacts) -> tuple[Finding, ...]:
    """Judge the domain's MTA-STS; pure."""
    r = facts.record
    domain, name = r.domain, f"_mta-sts.{r.domain}"
    if r.status is TxtStatus.NONE:
        return (CHECK.finding(
            "MTASTS_MISSING", domain,
            f"{domain} publishes no MTA-STS record at {name}: senders deliver over TLS only when it works, and an "
            "attacker on the path can strip it.",
            f"Publish a policy at https://mta-sts.{domain}/.well-known/mta-sts.txt and a TXT record "
            f'"v=STSv1; id=<date>" at {name}.',
        ),)  # fmt: skip
    if r.status is TxtStatus.DNS_ERROR:
        return (CHECK.finding("MTASTS_DNS_ERROR", domain, f"DNS gave no answer for {name} ({shown(r.detail)}).",
                              "Make the domain's nameservers answer for it."),)  # fmt: skip
    if r.status is not TxtStatus.FOUND:
        if r.status is TxtStatus.MULTIPLE:
            why = f"holds {sum(1 for t in r.texts if t.startswith('v=STSv1'))} v=STSv1 records"
        else:
            why = f"is invalid ({'; '.join(r.record.issues) if r.record else 'unreadable'})"
        return (CHECK.finding(
            "MTASTS_RECORD_INVALID", domain,
            f"{name} {shown(why)}: senders treat the domain as having no MTA-STS (RFC 8461 §3.1).",
            'Publish exactly one record "v=STSv1; id=<1-32 letters and digits>".',
        ),)  # fmt: skip
    if facts.fetch is None:
        return (CHECK.finding(
            "MTASTS_FETCH_FAILED", domain,
            f"The policy host mta-sts.{domain} was not fetched from: {facts.not_fetched}.",
            "Give the policy host a public address, or check with --allow-private.",
        ),)  # fmt: skip
    fetch = facts.fetch
    problem = judge_fetch(fetch)
    if problem is not None and facts.others:
        faults = "; ".join(f"{a.ip}: {_fault(a, judge_fetch(a) or problem)}" for a in (fetch, *facts.others))
        return (CHECK.finding(
            "MTASTS_FETCH_FAILED", domain,
            f"The MTA-STS policy at {fetch.url} cannot be fetched from any address of mta-sts.{domain} ({faults}): "
            f"senders without a cached policy treat {domain} as having none (RFC 8461 §3.3).",
            "Serve the policy over HTTPS with a valid certificate for the mta-sts host on each of its addresses, as "
            "text/plain, status 200.",
        ),)  # fmt: skip
    if problem is not None:
        return (CHECK.finding(
            "MTASTS_FETCH_FAILED", domain,
            f"The MTA-STS policy at {fetch.url} cannot be fetched ({_fault(fetch, problem)}): senders without a cached "
            f"policy treat {domain} as having none (RFC 8461 §3.3).",
            "Serve the policy over HTTPS with a valid certificate for the mta-sts host, as text/plain, status 200.",
        ),)  # fmt: skip
    partly = [_address_failed(domain, other, fault, fetch) for other in facts.others
              if (fault := judge_fetch(other)) is not None]  # fmt: skip
    policy = facts.policy
    assert policy is not None
    served = [(other, parse_policy(other.body)) for other in facts.others if judge_fetch(other) is None]
    partly += [_serves_another(domain, other, theirs, fetch, policy) for other, theirs in served
               if _terms(theirs) != _terms(policy)]  # fmt: skip
    if not policy.valid:
        issues = "; ".join(f"{i.kind.value}{f' (line {i.line})' if i.line else ''}: {shown(i.detail)}"
                           for i in policy.issues)  # fmt: skip
        return (*partly, CHECK.finding(
            "MTASTS_POLICY_INVALID", domain,
            f"The MTA-STS policy at {fetch.url} is invalid ({issues}): senders ignore it.",
            "Correct the policy file (RFC 8461 §3.2: version, mode, mx lines, max_age).",
        ))  # fmt: skip
    found: list[Finding] = partly
    if policy.mode is StsMode.NONE:
        found.append(CHECK.finding("MTASTS_MODE_NONE", domain, f"The MTA-STS policy of {domain} is mode none: it "
                                   "withdraws MTA-STS.", "Use mode enforce (after testing) or remove MTA-STS."))
    elif policy.mode is StsMode.TESTING:
        found.append(CHECK.finding("MTASTS_MODE_TESTING", domain, f"The MTA-STS policy of {domain} is in mode "
                                   "testing: failures are only reported (TLS-RPT), mail is still delivered.",
                                   "Switch to mode enforce once the TLS reports are clean."))  # fmt: skip
    if policy.max_age is not None and policy.max_age < _SHORT_MAX_AGE:
        found.append(CHECK.finding(
            "MTASTS_MAX_AGE_SHORT", domain,
            f"The MTA-STS policy of {domain} has max_age {policy.max_age} s: senders forget it within a day, so an "
            "attacker who blocks the policy fetch briefly can downgrade delivery.",
            "Use a max_age of weeks (604800 or more).",
        ))  # fmt: skip
    if policy.mode in (StsMode.ENFORCE, StsMode.TESTING):
        enforced = policy.mode is StsMode.ENFORCE
        code = "MTASTS_MX_NOT_COVERED" if enforced else "MTASTS_MX_NOT_COVERED_TESTING"
        for item in facts.coverage:
            if item.pattern is None:
                found.append(CHECK.finding(
                    code, item.host,
                    f"The MX host {item.host} of {domain} matches no mx: line of its MTA-STS policy "
                    f"({', '.join(policy.mx)}): senders {'refuse to deliver to it' if enforced else 'report it'}.",
                    f"Add 'mx: {item.host}' (or a matching *. pattern) to the policy and change the record's id.",
                    # exchange-model.md §5.2: what Exchange Online reports when it sends to such a domain
                    cloud_error=f"450 4.4.8 MX hosts of {domain} failed MTA-STS validation" if enforced else None,
                ))  # fmt: skip
    if not any(f.severity > Severity.NOTICE for f in found):
        found.insert(0, CHECK.finding(
            "MTASTS_OK", domain,
            f"{domain} publishes a valid MTA-STS policy (mode {policy.mode}, max_age {policy.max_age} s) that covers "
            f"its {len(facts.coverage)} MX host(s), fetched from {fetch.url} over {fetch.tls_version}.",
        ))  # fmt: skip
    return tuple(found)


async def probe(ctx: CheckContext) -> MtaStsFacts:
    mx = ctx.facts("mx", MxFacts)
    record = await drive(discover_txt(ctx.domain), ctx.resolver)
    if record.status is not TxtStatus.FOUND:
        return MtaStsFacts(record)
    host = f"mta-sts.{ctx.domain}"
    context = ctx.run.https_context()  # made while the policy host's addresses are looked up
    if not ctx.options.allow_private:
        answers = await asyncio.gather(*(ctx.resolver.query(host, rdtype) for rdtype in ("A", "AAAA")))
        addresses = [r.to_text() for a in answers if a.status is DnsStatus.OK for r in a.records]
        private = [address for address in addresses if not is_public(address)]
        if private:
            return MtaStsFacts(record, not_fetched=f"its address {private[0]} is not public")
    fetched = await fetch_policy(ctx.domain, ctx.resolver, context=await asyncio.shield(context),
                                 timeout=ctx.options.timeout, port=ctx.options.https_port,
                                 max_addresses=ctx.options.max_addresses_per_host)
    # The policy judged is a valid one where an address serves it, else the first one served at all.
    served = [(a, parse_policy(a.body)) for a in fetched if judge_fetch(a) is None]
    if not served:
        return MtaStsFacts(record, fetched[0], others=tuple(fetched[1:]))
    fetch, policy = next(((a, p) for a, p in served if p.valid), served[0])
    others = tuple(a for a in fetched if a is not fetch)
    covered = coverage(policy.mx, [h.name for h in mx.hosts]) if policy.valid else ()
    return MtaStsFacts(record, fetch, policy=policy, coverage=covered, others=others)


async def run(ctx: CheckContext) -> Outcome:
    facts = await probe(ctx)
    return Outcome(facts, assess(facts))


# The report's evidence (report_templates/checks/mtasts.html.j2), from the facts as a report holds them (their
# JSON form, read defensively: diag.evidence).

_MODE_TONES = {StsMode.ENFORCE.value: "good", StsMode.TESTING.value: "warn", StsMode.NONE.value: "warn"}
_RECORD_STATES = {
    TxtStatus.NONE.value: ("no MTA-STS record", "warn"),
    TxtStatus.MULTIPLE.value: ("more than one v=STSv1 record: senders see none", "bad"),
    TxtStatus.INVALID.value: ("invalid: senders see no MTA-STS", "bad"),
    TxtStatus.DNS_ERROR.value: ("no answer from DNS", "bad"),
}
_POLICY_LINES = 40  # lines of a fetched policy file shown (a policy has a handful; the fetch caps the body)


@frozen
class StsHostRow:
    """An MX host of the domain and the policy's ``mx:`` pattern that covers it ("" when none does)."""

    host: str
    pattern: str


@frozen
class MtaStsView:
    """The MTA-STS evidence: the record, the policy fetch, the policy's mode and max_age, each MX host's cover.

    Attributes:
        record: the ``_mta-sts`` TXT record as published, or what was there instead (``record_state``).
        url, fetched, fetch_tone: where the policy was fetched from, and how that went, in words.
        mode, mode_tone: the policy's mode (enforce, testing, none).
        max_age: the policy's max_age in seconds and days.
        patterns: its ``mx:`` lines.
        hosts: each MX host and the pattern covering it; ``enforced`` says whether an uncovered host is refused.
        policy_lines: the policy file as served.
    """

    record: str
    record_state: str
    record_tone: str
    url: str
    fetched: str
    fetch_tone: str
    mode: str
    mode_tone: str
    max_age: str
    patterns: tuple[str, ...]
    hosts: tuple[StsHostRow, ...]
    enforced: bool
    policy_lines: tuple[str, ...]


def view(observed: Observed) -> MtaStsView:
    facts = observed.facts
    record = ev.mapping(facts.get("record"))
    status = ev.text(record.get("status"))
    state, record_tone = _RECORD_STATES.get(status, ("", "good"))
    fetch, policy = ev.mapping(facts.get("fetch")), ev.mapping(facts.get("policy"))
    mode = ev.text(policy.get("mode"))
    max_age = ev.number(policy.get("max_age"))
    published = ev.text(ev.mapping(record.get("record")).get("text"))
    hosts = [StsHostRow(ev.text(c.get("host")), ev.text(c.get("pattern"))) for c in ev.mappings(facts.get("coverage"))]
    return MtaStsView(
        record=published or "; ".join(ev.text(t) for t in ev.items(record.get("texts"))),
        record_state=state,
        record_tone=record_tone,
        url=ev.text(fetch.get("url")),
        fetched=_fetched(fetch, ev.text(facts.get("not_fetched")), ev.mappings(facts.get("others"))),
        fetch_tone="good" if fetch and not fetch.get("error") and fetch.get("status") == 200 else "bad",
        mode=mode,
        mode_tone=_MODE_TONES.get(mode, "bad"),
        max_age=_max_age(max_age) if max_age is not None else "",
        patterns=tuple(ev.text(p) for p in ev.items(policy.get("mx"))),
        hosts=tuple(hosts),
        enforced=mode == StsMode.ENFORCE.value,
        policy_lines=_policy_lines(fetch.get("body")),
    )


def _max_age(seconds: float) -> str:
    span = f"{seconds / 86400:.3g} days" if seconds >= 86400 else f"{seconds / 3600:.3g} h"
    return f"{seconds:.0f} s ({span})"


def _fetched(fetch: Mapping[str, Any], not_fetched: str, others: Sequence[Mapping[str, Any]]) -> str:
    if not fetch:
        return f"not fetched: {not_fetched}" if not_fetched else ""
    return "; ".join(_answer_text(a, with_ip=bool(others)) for a in (fetch, *others))


def _answer_text(fetch: Mapping[str, Any], *, with_ip: bool) -> str:
    if fetch.get("error"):
        at = f" at {ev.text(fetch.get('ip'))}" if with_ip else ""
        return f"failed{at}: {ev.text(fetch.get('error'))}: {ev.text(fetch.get('detail'))}"
    parts = [f"HTTP {ev.text(fetch.get('status'))}", ev.text(fetch.get("content_type")) or "no media type",
             ev.text(fetch.get("tls_version")), f"from {ev.text(fetch.get('ip'))}" if fetch.get("ip") else ""]
    if fetch.get("location"):
        parts.append(f"redirect to {ev.text(fetch.get('location'))}")
    return ", ".join(p for p in parts if p)


def _policy_lines(body: Any) -> tuple[str, ...]:
    """The policy file as served (base64 in the facts), line by line."""
    if not isinstance(body, str) or not body:
        return ()
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return ()
    lines = raw.decode("utf-8", "replace").splitlines()
    more = [f"… {len(lines) - _POLICY_LINES} more lines"] if len(lines) > _POLICY_LINES else []
    return (*lines[:_POLICY_LINES], *more)


CHECK = Check(
    id="mtasts",
    title="MTA-STS",
    run=run,
    facts=MtaStsFacts,
    evidence=Evidence("MTA-STS policy", view, Section.POLICY),
    requires=("mx",),
    operations=4,
    codes={
        "MTASTS_OK": Severity.INFO,
        "MTASTS_MISSING": Severity.NOTICE,
        "MTASTS_RECORD_INVALID": Severity.WARNING,
        "MTASTS_DNS_ERROR": Severity.WARNING,
        "MTASTS_FETCH_FAILED": Severity.ERROR,
        "MTASTS_ADDRESS_FAILED": Severity.WARNING,
        "MTASTS_POLICY_INVALID": Severity.ERROR,
        "MTASTS_MODE_TESTING": Severity.NOTICE,
        "MTASTS_MODE_NONE": Severity.NOTICE,
        "MTASTS_MAX_AGE_SHORT": Severity.NOTICE,
        "MTASTS_MX_NOT_COVERED": Severity.CRITICAL,
        "MTASTS_MX_NOT_COVERED_TESTING": Severity.WARNING,
    },
    meanings={
        "MTASTS_OK": "A valid MTA-STS policy, fetched over validated HTTPS, covers every MX host.",
        "MTASTS_MISSING": "No _mta-sts record: the domain does not use MTA-STS.",
        "MTASTS_RECORD_INVALID": "The _mta-sts record is invalid or doubled: senders see no MTA-STS.",
        "MTASTS_DNS_ERROR": "The _mta-sts lookup got no answer.",
        "MTASTS_FETCH_FAILED": "The policy cannot be fetched (DNS, connection, certificate, redirect, status, "
        "media type).",
        "MTASTS_ADDRESS_FAILED": "An address of the policy host does not serve the policy (connection, TLS, "
        "certificate, HTTP) while another one does, or serves another policy.",
        "MTASTS_POLICY_INVALID": "The policy file is invalid: senders ignore it.",
        "MTASTS_MODE_TESTING": "The policy is in mode testing: failures are reported, not enforced.",
        "MTASTS_MODE_NONE": "The policy is in mode none: MTA-STS is withdrawn.",
        "MTASTS_MAX_AGE_SHORT": "max_age under a day.",
        "MTASTS_MX_NOT_COVERED": "An MX host matches no mx: pattern of an enforced policy: senders refuse it.",
        "MTASTS_MX_NOT_COVERED_TESTING": "An MX host matches no mx: pattern of a policy in mode testing.",
    },
)
