"""Which job a run is, and so which lock keeps it from overlapping itself.

Two unrelated cron jobs (``check contoso.com`` every 30 minutes, ``check fabrikam.com`` hourly) must never refuse
each other: each would lose its history, Prometheus file and notification for the other's sake. Only a second copy
of the *same* job is refused, and "the same" is decided on the normalised command, not on its spelling: domains
sorted and de-duplicated after IDNA conversion, paths made absolute, checks sorted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

from diag.frozen import frozen

__all__ = ["Job"]

# Domains named in a refusal; a --domains-file job may list thousands.
_SHOWN_DOMAINS = 3


def _absolute(path: str | Path | None) -> str | None:
    # Not resolve(): following links would make two spellings of a path through a changed link the same job.
    return None if path is None else str(Path(path).absolute())


@frozen
class Job:
    """One unattended job, normalised.

    Attributes:
        command: the diag command (``check``).
        domains: the domains checked (A-labels), sorted, each once, those of ``--domains-file`` included.
        checks: the ``--check`` selection, sorted; empty for every check.
        config: the organization file's absolute path, or None.
        lab: runs against a throw-away lab.
        outputs: (option, absolute path) of every file the run writes: ``--json``, ``--html``, ``--prom``,
            ``--junit``, ``--history``; sorted.
    """

    command: str
    domains: tuple[str, ...]
    checks: tuple[str, ...] = ()
    config: str | None = None
    lab: bool = False
    outputs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        command: str,
        domains: Iterable[str],
        *,
        checks: Iterable[str] = (),
        config: Path | None = None,
        lab: bool = False,
        outputs: Mapping[str, str | Path | None] | None = None,
    ) -> Job:
        """The job of a command line: ``outputs`` maps options to their targets (None or ``-`` for none)."""
        written = tuple(sorted(
            (option, path) for option, target in (outputs or {}).items()
            if target is not None and str(target) != "-" and (path := _absolute(target)) is not None
        ))  # fmt: skip
        return cls(command, tuple(sorted(set(domains))), tuple(sorted(set(checks))), _absolute(config), lab, written)

    @property
    def key(self) -> str:
        """A stable name for the job: the same for every spelling of the same command line."""
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def describe(self) -> str:
        """The job in a few words, for the one line that refuses a second copy: ``check contoso.com fabrikam.com``."""
        from diag.names import display_domain

        shown = [display_domain(domain) for domain in self.domains[:_SHOWN_DOMAINS]]
        if len(self.domains) > _SHOWN_DOMAINS:
            shown.append(f"and {len(self.domains) - _SHOWN_DOMAINS} more")
        return " ".join([self.command, *shown])
