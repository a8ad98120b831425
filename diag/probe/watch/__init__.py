"""Watchers: where a probe's arrival is observed (ARCHITECTURE §7). One interface (:class:`Watcher`), a Maildir
and an IMAP implementation, and :func:`watcher_for` to build one from a ``--watch`` URL."""

from __future__ import annotations

from pathlib import Path

from diag.probe.watch.base import Arrival, Candidate, Observation, Removal, Watcher, WatchError
from diag.probe.watch.imap import ImapCredentials, ImapTarget, ImapWatcher, parse_imap_url
from diag.probe.watch.maildir import MaildirWatcher

__all__ = [
    "Arrival",
    "Candidate",
    "ImapCredentials",
    "ImapTarget",
    "ImapWatcher",
    "MaildirWatcher",
    "Observation",
    "Removal",
    "WatchError",
    "Watcher",
    "parse_imap_url",
    "watcher_for",
]


def watcher_for(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    timeout: float,
    ca_file: Path | None = None,
    address: str | None = None,
) -> Watcher:
    """The watcher a ``--watch`` URL names: ``maildir:PATH``, ``imap://…`` or ``imaps://…``.

    For IMAP the user is ``user`` or the one in the URL, with ``password`` or an OAuth2 ``token`` (the caller
    reads them from DIAG_WATCH_PASSWORD / DIAG_WATCH_TOKEN). Raises ValueError with a sentence for a URL or
    credentials that cannot work; nothing is connected yet.
    """
    if url.startswith("maildir:"):
        path = url.removeprefix("maildir:")
        if not path:
            raise ValueError("maildir: needs a path (maildir:/var/mail/john)")
        return MaildirWatcher(Path(path).expanduser())
    target = parse_imap_url(url)
    name = user or target.user
    if not name:
        raise ValueError(f"{url!r}: no user: give --watch-user or put it in the URL (imap://user%40example.com@host/)")
    if (password is None) == (token is None):
        raise ValueError("IMAP needs a password (DIAG_WATCH_PASSWORD) or an OAuth2 token (DIAG_WATCH_TOKEN), not both")
    credentials = ImapCredentials(name, password=password, token=token)
    return ImapWatcher(target, credentials, timeout=timeout, ca_file=ca_file, address=address)
