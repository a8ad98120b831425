"""Who hears about a run, and when: the HTML report by mail, the JSON document to a webhook (diag.notify).

A notification that cannot be delivered is one line on stderr (cron mails it to the job's owner) and never
changes the exit code: the exit code reports the mail connectors, not the messenger.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from diag.errors import DnsError, UsageError
from diag.frozen import frozen

if TYPE_CHECKING:
    from diag.context import RunOptions
    from diag.history import Change
    from diag.notify import NotifyPolicy
    from diag.results import RunResults

__all__ = ["Notification"]


@frozen
class Notification:
    """When and where to report a run; refused when built if an address, the server or the URL is unusable, so
    that a typo fails at once rather than after the run.

    Attributes:
        policy: ``--notify``: after every run, when something changed, or when there is a problem.
        mail: ``--notify-mail``: the recipients of the HTML report, comma-separated, or None.
        smtp_server: ``--smtp-server``: ``HOST[:PORT]`` to submit the mail to (required with ``mail``).
        webhook: ``--webhook``: the URL the JSON document is POSTed to, or None.
    """

    policy: NotifyPolicy
    mail: str | None = None
    smtp_server: str | None = None
    webhook: str | None = None

    def __post_init__(self) -> None:
        from diag.notify import check_recipients, check_webhook_url, parse_smtp_server

        if self.mail:
            check_recipients(self.mail)
            if not self.smtp_server:
                raise UsageError("--notify-mail needs --smtp-server HOST[:PORT] to submit the report to")
        if self.webhook:
            check_webhook_url(self.webhook)
        if self.smtp_server is not None:
            parse_smtp_server(self.smtp_server)

    @property
    def wanted(self) -> bool:
        """Whether anyone is to hear about the run at all (a mail recipient or a webhook)."""
        return bool(self.mail or self.webhook)

    def send(self, options: RunOptions, results: RunResults, changes: Sequence[Change]) -> None:
        """Notify when the policy says so; a failure is one line on stderr."""
        if not self.wanted:
            return
        from diag.notify import NotifyError, post_webhook, should_notify

        document = results.document()
        if not should_notify(self.policy, document, changes):
            return
        if self.mail and self.smtp_server:
            from diag.render.html import render_html

            try:
                asyncio.run(self._mail(render_html(results.report()), document, options, changes))
            except (NotifyError, DnsError) as exc:
                _failed(exc)
        if self.webhook:
            try:
                asyncio.run(post_webhook(self.webhook, document))
            except NotifyError as exc:
                _failed(exc)

    async def _mail(self, html: str, document: Mapping[str, Any], options: RunOptions,
                    changes: Sequence[Change]) -> None:  # fmt: skip
        """Submit through ``smtp_server``, found with the run's own resolver and verified with its CAs."""
        import ipaddress

        from diag.net.dns import Resolver
        from diag.notify import parse_smtp_server, send_mail

        assert self.smtp_server is not None and self.mail is not None
        server, port = parse_smtp_server(self.smtp_server)
        address, name = server, None
        try:
            ipaddress.ip_address(server)
        except ValueError:
            resolver = Resolver(options.nameservers, timeout=options.timeout)
            try:
                answer = await resolver.query(server, "A")
            finally:
                await resolver.aclose()
            if not answer.records:
                raise DnsError(f"--smtp-server {server}: no address ({answer.status.value})") from None
            address, name = answer.records[0].to_text(), server
        # From the name this host announces (a fully qualified one), unless the credentials name a sender.
        sender = None if os.environ.get("DIAG_SMTP_USERNAME") else f"diag@{options.ehlo_name}"
        await send_mail(html, document, to=self.mail, server=address, port=port, tls_name=name,
                        ca_file=options.ca_file, timeout=options.timeout, changes=changes, sender=sender)  # fmt: skip


def _failed(error: Exception) -> None:
    sys.stderr.write(f"diag: notification failed: {error}\n")
