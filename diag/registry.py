"""Check specs and the registry that validates them.

A check is declared once, as a :class:`Check`: its id, the checks it needs, its time budget, the finding codes
it may emit with their default severities, and an async ``run(ctx)``. The :class:`Registry` validates the whole
set when it is built (unique ids, known and acyclic dependencies, well-formed codes) so that a broken
registry fails at start-up and in the tests, never in the middle of a run.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Any

from diag.errors import RegistryError
from diag.evidence import Evidence, Measurements
from diag.frozen import frozen
from diag.model import CheckResult, Finding, Severity

if TYPE_CHECKING:
    from diag.context import CheckContext, RunOptions

__all__ = ["Check", "Outcome", "Registry", "Summary"]

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")


@frozen
class Outcome:
    """What a check's ``run`` returns: the facts it observed and the findings judged from them.

    Two outcomes carry no facts and no findings, only a reason, and are never "passed":

    - ``skipped``: the check could not run because something it needs failed (MX hosts exist but none has an
      address: the mx check reports that error). The check ends ``skipped``, and the verdict is unknown unless
      something worse was found.
    - ``not_applicable``: there is nothing to examine, and that is no problem in itself (a domain with a null
      MX and nothing else accepts no mail, so it has no mail host to connect to). The check ends
      ``not_applicable``, which does not make the verdict unknown.

    One outcome carries facts and findings *and* a reason: ``incomplete``, when the check ran but part of what it
    examines could not be (an end-to-end probe whose mailbox could not be read, beside probes that were judged).
    Its findings stand, and the check ends ``error`` with the reason: what it could not see is unknown.
    """

    facts: Any
    findings: tuple[Finding, ...]
    skipped: str | None = None
    not_applicable: str | None = None
    incomplete: str | None = None

    @classmethod
    def skip(cls, reason: str) -> Outcome:
        """Could not run: ``reason`` names what it needed and did not get."""
        return cls(None, (), skipped=reason)

    @classmethod
    def inapplicable(cls, reason: str) -> Outcome:
        """Does not apply: ``reason`` says why there is nothing to examine."""
        return cls(None, (), not_applicable=reason)


@frozen
class Summary:
    """A verdict only the whole run can reach (every connection of the run timed out: egress is blocked), taken in
    two steps so that a run never needs all its results at once: thousands of domains are written out as they
    finish, possibly by several worker processes.

    Attributes:
        note: what one domain's result of the check contributes to the verdict: a small hashable value (the
            run keeps each distinct note once, so it should have few distinct values), taken as the result is made.
        revise: given the run's distinct notes in the order they were first seen (in the order of the domains),
            how to revise each result of the check; None when the run changes nothing (the usual case, which
            then costs nothing more).
    """

    note: Callable[[CheckResult], Hashable]
    revise: Callable[[Sequence[Hashable]], Callable[[CheckResult], CheckResult] | None]

    def apply(self, results: Sequence[CheckResult]) -> list[CheckResult]:
        """The check's results on every domain of a run, revised as the whole run sees them (for a run held in
        memory; exceptions propagate)."""
        notes = list(dict.fromkeys(self.note(result) for result in results))
        reviser = self.revise(notes)
        return list(results) if reviser is None else [reviser(result) for result in results]


@frozen
class Check:
    """The spec of one check.

    Attributes:
        id: short snake_case noun, unique in the registry (``mx``).
        title: what it checks, for people (``MX records``).
        run: ``async run(ctx) -> Outcome``; gathers facts through probes and judges them with a pure function.
        codes: every finding code the check may emit, with its default severity.
        requires: ids of checks whose facts this check reads; it runs after them, and is skipped if one of
            them could not run, or is not applicable if one of them is not applicable (and none failed).
        timeout: the check's own time budget in seconds, beyond the network operations it waits for.
        operations: how many network operations the check may wait for one after another; each adds the
            run's per-operation timeout (``--timeout``) to the budget, so a longer ``--timeout`` never turns
            a slow but working server into a check timeout.
        tags: labels such as ``active`` (the check sends mail), ``config`` (it needs ``--config``),
            ``sessions`` (it opens the SMTP session at every MX address: the run then starts each as soon as
            the mx check knows the address, :attr:`RunContext.early_sessions`) and ``dnssec`` (it reads DNSSEC
            material: a run with such a check asks every DNS question with the DO bit,
            :class:`~diag.net.dns.Resolver`).
        summary: optional verdict over this check's results on every domain of a run (:class:`Summary`).
        meanings: what each code in ``codes`` means, one line each, for people (``diag codes`` and the README's
            catalogue print it). Kept apart from ``codes``, which stays a mapping from code to severity for its
            readers.
        facts: the frozen dataclass of the facts ``run`` returns; a saved result's facts are read back into it
            (:meth:`diag.model.Report.from_json`), so it may hold only what :mod:`diag.codec` round-trips.
        evidence: how the HTML report shows the facts (the view data for the check's template partial,
            ``report_templates/checks/<id>.html.j2``); None for a check with nothing to show beside its findings.
        measure: what the monitoring formats export from the facts (SMTP stage timings, certificate expiry).
            Both read the facts in their JSON form, defensively (:mod:`diag.evidence`).
        waits: optional function of the run's options giving the seconds the check waits beyond its network
            operations (the ``e2e`` check waits for its probes to arrive, up to their Deadline); added to its
            budget.
        lazy_imports: modules the check's run imports only when it first needs them, because they take long to
            import (cryptography) and nothing before the run's first packet needs them: a run imports them in a
            thread as it starts, while its first questions are in flight. The SMTP client of the sessions is not
            listed here: the run adds it where it opens sessions itself (:meth:`RunContext.imports_for`).
    """

    id: str
    title: str
    run: Callable[[CheckContext], Awaitable[Outcome]]
    codes: Mapping[str, Severity]
    requires: tuple[str, ...] = ()
    timeout: float = 10.0
    operations: int = 0
    tags: frozenset[str] = field(default_factory=frozenset)
    summary: Summary | None = None
    meanings: Mapping[str, str] = field(default_factory=dict)
    facts: type[Any] | None = None
    evidence: Evidence | None = None
    measure: Callable[[Mapping[str, Any]], Measurements] | None = None
    waits: Callable[[RunOptions], float] | None = None
    lazy_imports: tuple[str, ...] = ()

    def finding(
        self,
        code: str,
        subject: str,
        message: str,
        remediation: str = "",
        *,
        cloud_error: str | None = None,
    ) -> Finding:
        """A finding with the severity this check declares for ``code``."""
        try:
            severity = self.codes[code]
        except KeyError:
            raise RegistryError(f"check {self.id!r} emits undeclared finding code {code!r}") from None
        return Finding(code, severity, subject, message, remediation, cloud_error)

    def budget(self, operation_timeout: float, options: RunOptions | None = None) -> float:
        """Seconds this check may take when each network operation may take ``operation_timeout`` (and, given the
        run's ``options``, what it waits for beyond them)."""
        waiting = self.waits(options) if self.waits is not None and options is not None else 0.0
        return self.timeout + self.operations * operation_timeout + waiting


class Registry:
    """A validated set of checks; iterating gives them in registration order."""

    def __init__(self, checks: Iterable[Check]) -> None:
        by_id: dict[str, Check] = {}
        for check in checks:
            if not _ID.match(check.id):
                raise RegistryError(f"check id {check.id!r} is not a snake_case noun")
            if check.id in by_id:
                raise RegistryError(f"check id {check.id!r} is registered twice")
            if check.timeout <= 0:
                raise RegistryError(f"check {check.id!r} has a non-positive timeout")
            for code in check.codes:
                if not _CODE.match(code):
                    raise RegistryError(f"check {check.id!r} declares malformed finding code {code!r}")
                meaning = check.meanings.get(code, "")
                if not meaning.strip() or "\n" in meaning:
                    raise RegistryError(f"check {check.id!r} declares no one-line meaning for finding code {code!r}")
            for code in check.meanings:
                if code not in check.codes:
                    raise RegistryError(f"check {check.id!r} gives a meaning for undeclared finding code {code!r}")
            by_id[check.id] = check
        owners: dict[str, str] = {}
        for check in by_id.values():
            for dep in check.requires:
                if dep not in by_id:
                    raise RegistryError(f"check {check.id!r} requires unknown check {dep!r}")
            for code in check.codes:
                if code in owners:
                    raise RegistryError(f"finding code {code!r} is declared by {owners[code]!r} and {check.id!r}")
                owners[code] = check.id
        sorter = graphlib.TopologicalSorter({c.id: c.requires for c in by_id.values()})
        try:
            self._execution_order = tuple(sorter.static_order())
        except graphlib.CycleError as exc:
            raise RegistryError(f"check dependencies form a cycle: {' -> '.join(exc.args[1])}") from None
        self._checks = by_id

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks.values())

    def tagged(self, tag: str) -> bool:
        """Does any check of the registry carry ``tag``?"""
        return any(tag in check.tags for check in self._checks.values())

    def lazy_imports(self) -> tuple[str, ...]:
        """The :attr:`Check.lazy_imports` of every check, each module once, in registration order."""
        return tuple(dict.fromkeys(module for check in self._checks.values() for module in check.lazy_imports))

    def __len__(self) -> int:
        return len(self._checks)

    def __contains__(self, check_id: object) -> bool:
        return check_id in self._checks

    def __getitem__(self, check_id: str) -> Check:
        return self._checks[check_id]

    @property
    def facts(self) -> dict[str, type[Any]]:
        """The class of each check's facts, by check id, for :meth:`diag.model.Report.from_json`."""
        return {check.id: check.facts for check in self if check.facts is not None}

    @property
    def ids(self) -> tuple[str, ...]:
        """Check ids in the order they were registered: the order results are shown in."""
        return tuple(self._checks)

    def execution_order(self) -> tuple[Check, ...]:
        """The checks in an order where every check comes after the checks it requires."""
        return tuple(self._checks[check_id] for check_id in self._execution_order)

    def select(self, ids: Sequence[str]) -> Registry:
        """The named checks and everything they require; all checks when ``ids`` is empty."""
        if not ids:
            return self
        unknown = [check_id for check_id in ids if check_id not in self._checks]
        if unknown:
            raise RegistryError(f"unknown check {unknown[0]!r}; known checks: {', '.join(self._checks)}")
        wanted: set[str] = set()
        stack = list(ids)
        while stack:
            check_id = stack.pop()
            if check_id not in wanted:
                wanted.add(check_id)
                stack.extend(self._checks[check_id].requires)
        return Registry(check for check in self if check.id in wanted)
