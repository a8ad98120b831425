"""Organizational domains (RFC 7489 §3.2) from the Public Suffix List, offline.

The list comes from the ``publicsuffixlist`` package, which ships a snapshot of the PSL inside the wheel and
never fetches at run time (its updater is a separate, explicit command); its version carries the snapshot's
date (``1.1.2.20261023``). ``tldextract`` was the alternative: it also bundles a snapshot, but by default
downloads a fresh list on first use and caches it on disk, which a diagnostic tool run from cron must not do
behind the operator's back, and it brings ``requests`` and ``filelock`` along.

DMARCbis (RFC 9989) replaces the PSL with a DNS tree walk; RFC 7489's PSL method is what receivers that
follow RFC 7489 do, and the two agree whenever no ``psd=`` record sits between the domain and its suffix.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from publicsuffixlist import PublicSuffixList

__all__ = ["OrgDomains"]


class OrgDomains:
    """The PSL loaded once (about 40 ms); make one per run and ask it for organizational domains."""

    def __init__(self) -> None:
        # The full list, private section included, as RFC 7489 §3.2 prescribes ("the Public Suffix List").
        self._psl = PublicSuffixList()

    @functools.cached_property
    def snapshot(self) -> str:
        """The bundled list's package version, whose last part is its date (looked up once: reading package
        metadata costs more than the rest of a domain's DMARC check)."""
        try:
            return version("publicsuffixlist")
        except PackageNotFoundError:
            return "unknown"

    def organizational(self, domain: str) -> str:
        """RFC 7489 §3.2: the public suffix plus one label (``mail.contoso.co.uk`` → ``contoso.co.uk``).

        A name that is itself a public suffix (or a single label) is its own organizational domain.
        """
        name = domain.rstrip(".").lower()
        return self._psl.privatesuffix(name) or name

    def is_public_suffix(self, domain: str) -> bool:
        return self._psl.publicsuffix(domain.rstrip(".").lower()) == domain.rstrip(".").lower()
