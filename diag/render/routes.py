"""Views of routing decisions (``diag route``): the ``diag.routes/1`` JSON of CONTRACT.md and plain text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

from diag.frozen import frozen
from diag.model import Finding
from diag.render.json import finding_dict
from diag.render.text import sanitize
from diag.routing import RouteDecision, Routing, RoutingOrder

__all__ = ["RouteReport", "dumps", "render_plain", "routes_dict"]

SCHEMA = "diag.routes/1"


@frozen
class RouteReport:
    """One recipient's routing, with the findings about it."""

    recipient: str
    routing: Routing
    findings: tuple[Finding, ...]


def _route(item: RouteReport) -> dict[str, Any]:
    decision = item.routing.decision
    connector = decision.connector
    alternative = item.routing.alternative
    return {
        "recipient": item.recipient,
        "domain": decision.domain,
        "connector": connector.name if connector else None,
        "rule": decision.rule.value,
        "smart_hosts": list(connector.smart_hosts) if connector else [],
        "tls_settings": connector.tls_settings.value if connector and connector.tls_settings else None,
        "tls_domain": connector.tls_domain if connector else None,
        "alternative": _alternative(alternative) if alternative else None,
        "findings": [finding_dict(f) for f in item.findings],
    }


def _alternative(decision: RouteDecision) -> dict[str, Any]:
    return {
        "routing_order": decision.order.value,
        "connector": decision.connector.name if decision.connector else None,
        "rule": decision.rule.value,
    }


def routes_dict(items: Sequence[RouteReport], order: RoutingOrder) -> dict[str, Any]:
    return {"schema": SCHEMA, "routing_order": order.value, "routes": [_route(item) for item in items]}


def dumps(items: Sequence[RouteReport], order: RoutingOrder) -> str:
    return json.dumps(routes_dict(items, order), indent=2, ensure_ascii=True) + "\n"


def render_plain(items: Sequence[RouteReport], stream: IO[str]) -> None:
    """Per recipient: the connector and the rule that chose it, its smart hosts and TLS, the other reading."""
    for item in items:
        decision = item.routing.decision
        connector = decision.connector
        if connector is None:
            stream.write(f"{sanitize(item.recipient)} -> no connector: delivered by DNS MX ({decision.rule.value})\n")
        else:
            how = f"{decision.rule.value} {decision.pattern}" if decision.pattern else decision.rule.value
            stream.write(f"{sanitize(item.recipient)} -> {sanitize(connector.name)} ({how})\n")
            targets = "MX of the domain" if connector.use_mx_record else ", ".join(connector.smart_hosts)
            tls = connector.tls_settings.value if connector.tls_settings else "opportunistic"
            if connector.tls_domain:
                tls += f", TlsDomain {connector.tls_domain}"
            stream.write(f"  smart hosts: {sanitize(targets)}; TLS: {tls}\n")
        if item.routing.alternative is not None:
            other = item.routing.alternative
            name = other.connector.name if other.connector else "no connector (DNS MX)"
            stream.write(f"  {other.order.value} order: {sanitize(name)} ({other.rule.value})\n")
        for finding in item.findings:
            if finding.severity.label != "info":
                stream.write(f"  {finding.severity.label.upper()} {finding.code}: {sanitize(finding.message)}\n")
