"""Views of ``diag probe --dry-run``: what each probe would do (:class:`~diag.probe.run.Plan`), one line each on
the terminal, or a JSON list (``--json``).

Host names come from DNS and addresses from the configuration: the lines are sanitised like banners (control and
bidi characters escaped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

from diag.codec import encode
from diag.probe.run import Plan
from diag.render.text import sanitize

__all__ = ["dumps", "line", "plan_dict", "render_plain"]


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The JSON object of one plan: its fields (:class:`Plan`) and ``sends``."""
    return {**encode(plan), "sends": plan.sends}


def dumps(plans: Sequence[Plan]) -> str:
    """The JSON list of the plans, in order."""
    return json.dumps([plan_dict(plan) for plan in plans], indent=2, ensure_ascii=True) + "\n"


def _via(plan: Plan) -> str:
    if plan.via is None:
        return f"the MX of {plan.mx_of}"
    return f"{plan.via} (the MX of {plan.mx_of})" if plan.mx_of else plan.via


def _verdict(plan: Plan) -> str:
    reasons = []
    if (held := plan.held) is not None:
        age = f"{held.age_s:.0f} s" if held.age_s is not None else "less than MinInterval"
        reasons.append(held.problem or f"the same probe was sent {age} ago (MinInterval {plan.min_interval_s:g} s)")
    reasons.extend(plan.problems)
    return f"would not be sent: {'; '.join(reasons)}" if reasons else "would be sent"


def line(plan: Plan) -> str:
    """One line for people: the probe, where it would enter, its mailbox and times, and whether it would go."""
    times = [f"deadline {plan.deadline_s:g} s"]
    if plan.slow_s is not None:
        times.append(f"slow {plan.slow_s:g} s")
    times.append(f"min interval {plan.min_interval_s:g} s")
    if plan.round_trip:
        times.append("round trip")
    text = (f"{plan.name}: {plan.sender} -> {plan.recipient} via {_via(plan)}, watch {plan.watch}, "
            f"{', '.join(times)}: {_verdict(plan)}")  # fmt: skip
    return sanitize(text, limit=2000)


def render_plain(plans: Sequence[Plan], stream: IO[str]) -> None:
    """One line per plan."""
    for plan in plans:
        stream.write(line(plan) + "\n")
