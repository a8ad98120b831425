"""Notification after an unattended run: mail the HTML report, or post the JSON document to a webhook.

    if should_notify(policy, document, changes):
        await send_mail(html, document, to="postmaster@contoso.com", server="smtp.contoso.com", port=587)
        await post_webhook("https://hooks.example/diag", document, timeout=10)

Policies (``--notify``):

* ``always``: after every run.
* ``change`` (the default): when anything changed since the previous run (diag.history). A domain's first run
  notifies only when that domain has a problem (its status is not ok), so a new cron job does not mail "all is
  well", but does not keep a broken domain quiet either.
* ``problem``: whenever the run's status is not ok (warning, critical or unknown).

A notification that cannot be delivered raises :class:`NotifyError` (one line, no traceback). It does **not**
change the run's exit code: the exit code reports the mail connectors, not the messenger. diag.unattended
prints the line to stderr (cron mails it to the job's owner) and the run keeps its exit code.

Mail: the SMTP server's certificate is verified (system store, or ``ca_file``); STARTTLS is used whenever the
server offers it, and a failed TLS handshake fails the notification rather than falling back to plain text.
Credentials come from ``DIAG_SMTP_USERNAME`` / ``DIAG_SMTP_PASSWORD`` (not from the command line, where ``ps``
shows them) and are only ever sent over TLS (security-cases PC-05). Port 465 means implicit TLS (RFC 8314).

Webhook: the document is POSTed as ``application/json`` with the standard library's HTTP client in a thread;
http and https only, without ``user:password@``; a host name beyond ASCII is sent in A-labels, other characters
beyond ASCII percent-encoded as UTF-8; redirects are not followed (they would turn the POST into a GET); anything
but a 2xx answer is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from http.client import HTTPException
from pathlib import Path
from typing import Any, Final

import aiosmtplib
import idna

from diag.errors import DiagError, UsageError
from diag.history import Change, ChangeKind, describe
from diag.names import local_host_name, port_number
from diag.render.text import sanitize

__all__ = [
    "NotifyError",
    "NotifyPolicy",
    "check_recipients",
    "check_webhook_url",
    "mail_subject",
    "mail_text",
    "parse_smtp_server",
    "post_webhook",
    "send_mail",
    "should_notify",
]

USERNAME_VARIABLE: Final = "DIAG_SMTP_USERNAME"
PASSWORD_VARIABLE: Final = "DIAG_SMTP_PASSWORD"  # noqa: S105 - the variable's name, not a password
# Domains named in a subject before "and N more".
_SUBJECT_DOMAINS: Final = 3
# Findings listed per domain in the text part; the HTML part has them all.
_TEXT_FINDINGS: Final = 20
# What we read of a webhook's answer: enough for an error message.
_ANSWER_BYTES: Final = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BEYOND_ASCII = re.compile(r"[^\x00-\x7f]+")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


class NotifyError(DiagError, ConnectionError):
    """A notification could not be delivered; the message is one line. The run's exit code stays as it was."""


class NotifyPolicy(enum.StrEnum):
    """When to notify (``--notify``)."""

    ALWAYS = "always"
    CHANGE = "change"
    PROBLEM = "problem"


def should_notify(policy: str, document: Mapping[str, Any], changes: Sequence[Change]) -> bool:
    """Whether a run with this ``diag.report/1`` document and these changes (diag.history) is worth a message."""
    try:
        chosen = NotifyPolicy(policy)
    except ValueError:
        choices = ", ".join(p.value for p in NotifyPolicy)
        raise UsageError(f"--notify {policy!r}: choose one of {choices}") from None
    match chosen:
        case NotifyPolicy.ALWAYS:
            return True
        case NotifyPolicy.PROBLEM:
            return document.get("status") != "ok"
        case NotifyPolicy.CHANGE:
            status = {d["domain"]: d["status"] for d in document.get("domains", ())}
            return any(
                change.kind is not ChangeKind.FIRST_RUN or status.get(change.domain, "unknown") != "ok"
                for change in changes
            )


# -- mail ----------------------------------------------------------------------------------------------------


def check_recipients(to: str) -> list[str]:
    """The addresses of ``to`` (comma-separated); :class:`UsageError` when one is not a mail address."""
    if _CONTROL.search(to):
        raise UsageError(f"--notify-mail {sanitize(to)!r}: control characters are not allowed in an address")
    addresses = [address for _, address in getaddresses([to])]
    if not addresses or any(not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.?[^@\s<>]*", a) for a in addresses):
        raise UsageError(f"--notify-mail {to!r}: give one or more mail addresses separated by commas")
    return addresses


def parse_smtp_server(text: str) -> tuple[str, int]:
    """``--smtp-server HOST[:PORT]`` as (host, port): an IP address, or a name in A-labels; port 25 by default.

    An IPv6 address takes a port only in brackets, as in a URL (``[2001:db8::25]:587``, RFC 3986 §3.2.2).
    Raises :class:`UsageError` in one line.
    """
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", text)
    if bracketed is not None:
        host, port_text = bracketed[1], bracketed[2]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, or an IPv6 address without a port
        host, port_text = text, None
    try:
        if not host:
            raise ValueError("give the submission server as HOST[:PORT]")
        port = 25 if port_text is None else port_number(port_text)
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(host)), port
        if "[" in text:
            raise ValueError("write an IPv6 address with a port as [ADDRESS]:PORT")
        return _host_name(host), port
    except ValueError as error:
        raise UsageError(f"--smtp-server {text!r}: {error}") from None


def mail_subject(document: Mapping[str, Any]) -> str:
    """``diag: CRITICAL for contoso.com, expired.example`` (one line, control characters escaped)."""
    domains = [str(d.get("domain", "?")) for d in document.get("domains", ())]
    shown = ", ".join(domains[:_SUBJECT_DOMAINS])
    if len(domains) > _SUBJECT_DOMAINS:
        shown += f" and {len(domains) - _SUBJECT_DOMAINS} more"
    status = str(document.get("status", "unknown")).upper()
    # sanitize() leaves no CR or LF, so the value cannot end the header (header injection).
    return sanitize(f"diag: {status} for {shown or 'no domain'}", limit=200)


def mail_text(document: Mapping[str, Any], changes: Sequence[Change] = ()) -> str:
    """The plain-text part: the verdict per domain, its problems, and what changed."""
    lines = [
        f"diag {document.get('tool', {}).get('version', '')}: {str(document.get('status', '')).upper()} "
        f"(exit code {document.get('exit_code')})",
        f"Run started {document.get('started_at')}, finished {document.get('finished_at')}.",
        "",
    ]
    for domain in document.get("domains", ()):
        lines.append(f"{domain['domain']}: {str(domain['status']).upper()}")
        problems = [
            f for check in domain.get("checks", ()) for f in check.get("findings", ()) if f.get("severity") != "info"
        ]
        for finding in problems[:_TEXT_FINDINGS]:
            lines.append(f"  {finding['severity']} {finding['code']} {finding['subject']}")
            lines.append(f"      {finding['message']}")
            if finding.get("remediation"):
                lines.append(f"      Fix: {finding['remediation']}")
        if len(problems) > _TEXT_FINDINGS:
            lines.append(f"  … and {len(problems) - _TEXT_FINDINGS} more; see the HTML report")
        for check in domain.get("checks", ()):
            if check.get("status") in ("error", "timeout"):
                lines.append(f"  the {check['id']} check could not run: {check['status']} ({check.get('reason')})")
        lines.append("")
    if changes:
        lines.append("Changes since the previous run:")
        lines.extend(f"  {describe(change)}" for change in changes)
        lines.append("")
    lines.append("The full report is the HTML part of this message.")
    return "\n".join(sanitize(line) for line in lines) + "\n"


def _message(
    html: str, document: Mapping[str, Any], changes: Sequence[Change], to: Sequence[str], sender: str
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = mail_subject(document)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(datetime.now(UTC))
    # An explicit domain: make_msgid() would otherwise ask DNS for this host's FQDN, which may hang.
    message["Message-ID"] = make_msgid("diag", domain=sender.rpartition("@")[2] or "diag.invalid")
    # RFC 3834 §5: automatic messages say so, so that vacation responders do not answer them.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail_text(document, changes))
    message.add_alternative(html, subtype="html")
    return message


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except ssl.SSLError:  # before OSError, of which it is a subclass
        raise NotifyError(f"the CA file {ca_file} for the notification holds no usable certificate") from None
    except OSError as error:
        raise NotifyError(f"cannot read the CA file {ca_file} for the notification: {error.strerror}") from None


async def send_mail(
    html: str,
    document: Mapping[str, Any],
    *,
    to: str,
    server: str,
    port: int = 25,
    sender: str | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the SMTP client's per-operation timeout, also bounds the whole send
    ca_file: Path | None = None,
    tls_name: str | None = None,
    implicit_tls: bool | None = None,
    changes: Sequence[Change] = (),
    environ: Mapping[str, str] | None = None,
) -> str:
    """Mail the report: text summary and ``html`` as multipart/alternative; return the server's final reply.

    Args:
        html: the HTML report (self-contained).
        document: the run's ``diag.report/1`` document (subject and text part).
        to: one or more recipients, comma-separated.
        server, port: the mail server (a submission server, or the recipient domain's MX).
        sender: the From and envelope sender; default the username if it is an address, else
            ``diag@<this host>``.
        timeout: seconds for each SMTP operation; the whole exchange gets four times that.
        ca_file: PEM bundle to verify the server's certificate with, instead of the system store.
        tls_name: the name the certificate must carry (and SNI), when ``server`` is an IP address.
        implicit_tls: TLS from the first byte (RFC 8314 §3.3) instead of STARTTLS; default: on port 465.
        changes: what changed since the previous run, listed in the text part.
        environ: where to read ``DIAG_SMTP_USERNAME`` / ``DIAG_SMTP_PASSWORD``; default ``os.environ``.

    Raises :class:`NotifyError` for every failure, in one line.
    """
    recipients = _recipients(to)
    env = os.environ if environ is None else environ
    username, password = env.get(USERNAME_VARIABLE) or None, env.get(PASSWORD_VARIABLE) or None
    if (username is None) != (password is None):
        raise NotifyError(f"set both {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, or neither")
    if sender is None:
        sender = username if username is not None and "@" in username else f"diag@{local_host_name()}"
    if _CONTROL.search(sender):
        raise NotifyError("the sender address contains control characters")
    try:
        message = _message(html, document, changes, recipients, sender)
    except ValueError as error:  # the email package's header errors (HeaderParseError) are ValueErrors
        raise NotifyError(f"cannot build the notification mail: {_one_line(str(error))}") from None
    context = _tls_context(ca_file)
    where = sanitize(f"{server}:{port}", limit=300)
    client: aiosmtplib.SMTP | None = None
    try:
        async with asyncio.timeout(timeout * 4):
            implicit = port == 465 if implicit_tls is None else implicit_tls
            client = await _connect(server, port, timeout, context, tls_name, implicit)
            try:
                return await _deliver(client, message, sender, recipients, username, password, tls_name, where)
            finally:
                if client.is_connected:
                    try:
                        await client.quit()
                    except aiosmtplib.SMTPException:
                        client.close()
    except NotifyError:
        raise
    except TimeoutError:
        raise NotifyError(f"notification mail via {where}: no answer within {timeout:g} s") from None
    except aiosmtplib.SMTPRecipientsRefused as error:
        raise NotifyError(f"notification mail via {where}: {_refused(error.recipients)}") from None
    except aiosmtplib.SMTPResponseException as error:
        raise NotifyError(f"notification mail via {where}: refused: {error.code} {_one_line(error.message)}") from None
    except (aiosmtplib.SMTPException, OSError) as error:
        raise NotifyError(f"notification mail via {where}: {_reason(error)}") from None
    except UnicodeError as error:  # the report holds text that cannot be encoded (lone surrogates)
        raise NotifyError(
            f"notification mail via {where}: cannot encode the message: {_one_line(str(error))}"
        ) from None
    finally:
        if client is not None:
            client.close()


async def _connect(
    server: str, port: int, seconds: float, context: ssl.SSLContext, tls_name: str | None, implicit: bool
) -> aiosmtplib.SMTP:
    """A connected client; with implicit TLS the handshake is done by now."""
    sock = None
    if implicit and tls_name is not None:
        # aiosmtplib verifies implicit TLS against the name it connects to; to verify another name, connect
        # the socket here and give it the name to verify.
        sock = await asyncio.to_thread(socket.create_connection, (server, port), seconds)
        sock.setblocking(False)
    client = aiosmtplib.SMTP(
        hostname=tls_name if sock is not None else server, port=None if sock is not None else port, sock=sock,
        timeout=seconds, use_tls=implicit, start_tls=False, tls_context=context, local_hostname=local_host_name(),
    )  # fmt: skip
    try:
        await client.connect()
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return client


async def _deliver(
    client: aiosmtplib.SMTP,
    message: EmailMessage,
    sender: str,
    recipients: Sequence[str],
    username: str | None,
    password: str | None,
    tls_name: str | None,
    where: str,
) -> str:
    await client.ehlo()
    if not _is_tls(client):
        if client.supports_extension("starttls"):
            # Verified like any TLS connection: a certificate that fails fails the notification; falling back
            # to plain text would let whoever breaks TLS read the report.
            await client.starttls(server_hostname=tls_name)
            await client.ehlo()
        elif username is not None:
            raise NotifyError(
                f"notification mail via {where}: the server does not offer STARTTLS; "
                "credentials are never sent without TLS"
            )
    if username is not None and password is not None:
        if not client.supports_extension("auth"):
            raise NotifyError(f"notification mail via {where}: the server does not offer AUTH; unset "
                              f"{USERNAME_VARIABLE} and {PASSWORD_VARIABLE} or use a submission server")  # fmt: skip
        await client.login(username, password)
    refused, reply = await client.send_message(message, sender=sender, recipients=list(recipients))
    if refused:
        raise NotifyError(f"notification mail via {where}: sent, but {_refused(refused.values())}")
    return _one_line(reply)


def _refused(responses: Iterable[Any]) -> str:
    first = next(iter(responses))
    code, text, recipient = first.args[:3] if len(first.args) >= 3 else (first.code, first.message, "")
    return f"recipient {_one_line(str(recipient))} refused: {code} {_one_line(str(text))}"


def _reason(error: BaseException) -> str:
    """An exception as one line: a certificate error as the verifier's words, a socket error as its errno text."""
    seen: BaseException | None = error
    system: OSError | None = None
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the server's certificate is not trusted: {seen.verify_message}"
        if system is None and isinstance(seen, OSError) and not isinstance(seen, aiosmtplib.SMTPException):
            system = seen
        seen = seen.__cause__ or seen.__context__
    if system is not None:
        return _one_line(_system_reason(system))
    return _one_line(str(error) or type(error).__name__)


def _system_reason(error: OSError) -> str:
    # asyncio words refusals as "Connect call failed ('127.0.0.1', 9)"; the errno's own text is clearer.
    if not isinstance(error, socket.gaierror) and error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def _one_line(text: str) -> str:
    return sanitize(" ".join(text.split()), limit=200)


def _is_tls(client: aiosmtplib.SMTP) -> bool:
    return client.get_transport_info("ssl_object") is not None


def _recipients(to: str) -> list[str]:
    try:
        return check_recipients(to)
    except UsageError as error:
        raise NotifyError(str(error)) from None


# -- webhook -------------------------------------------------------------------------------------------------


def _redacted(url: str) -> str:
    """``url`` for an error message: without user info, query and fragment, which often carry a secret."""
    without_query = re.split(r"[?#]", url, maxsplit=1)[0]
    return sanitize(re.sub(r"^([^:/?#]*://)[^/?#]*@", r"\1", without_query))


def _url_problem(url: str) -> str | None:
    shown = _redacted(url)
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as error:
        return f"--webhook {shown!r}: {error}"
    if parts.scheme not in ("http", "https"):
        return f"--webhook {shown!r}: only http:// and https:// URLs can be posted to"
    if not parts.hostname:
        return f"--webhook {shown!r}: the URL names no host"
    if _CONTROL.search(url) or " " in url:
        return f"--webhook {shown!r}: spaces and control characters must be percent-encoded"
    if parts.username is not None:
        # Refused rather than sent as basic auth, which http:// would carry in the clear (as PC-05 refuses for mail).
        return f"--webhook {shown!r}: user:password@ is not supported; use a URL with a token, as webhooks do"
    try:
        _ascii_url(url)
    except ValueError as error:
        return f"--webhook {shown!r}: {sanitize(str(error))}"
    return None


def _ascii_url(url: str) -> str:
    """``url`` as it goes on the wire, in ASCII: the host in A-labels (IDNA 2008, UTS #46, as
    :func:`~diag.names.mail_domain`), other characters beyond ASCII percent-encoded as UTF-8 (RFC 3987 §3.1).

    ``http.client`` would raise UnicodeError for a name it cannot encode and for a path beyond ASCII.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = _host_name(host)
    else:
        host = f"[{host}]" if ":" in host else host
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    path, query = _BEYOND_ASCII.sub(_percent, parts.path), _BEYOND_ASCII.sub(_percent, parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def _percent(match: re.Match[str]) -> str:
    # Bytes that are not UTF-8 reach argv as surrogates (PEP 383); they are sent as the bytes they were.
    return urllib.parse.quote(match[0], errors="surrogateescape")


def _host_name(name: str) -> str:
    """A host name in A-labels (IDNA 2008 with UTS #46, as :func:`~diag.names.mail_domain`); ValueError if it is
    not one. Unlike a mail domain it may be a single label (``localhost``) or hold an underscore."""
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as error:
            raise ValueError(f"not a valid internationalized host name: {error}") from None
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.removesuffix(".").split(".")):
        raise ValueError("a host name has labels of 1 to 63 letters, digits, '-' or '_', and 253 characters at most")
    return name


def check_webhook_url(url: str) -> str:
    """``url`` if it can be posted to; otherwise :class:`UsageError` (for checking options before a run)."""
    problem = _url_problem(url)
    if problem is not None:
        raise UsageError(problem)
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect as the answer it is: following it would turn the POST into a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


async def post_webhook(
    url: str,
    document: Mapping[str, Any],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - the HTTP client's socket timeout, also bounds the whole post
    ca_file: Path | None = None,
) -> int:
    """POST the document as JSON to ``url``; return the HTTP status. :class:`NotifyError` unless it is 2xx."""
    problem = _url_problem(url)
    if problem is not None:
        raise NotifyError(problem)
    body = json.dumps(document, ensure_ascii=True).encode("ascii")
    context = _tls_context(ca_file) if url.startswith("https:") else None
    shown = _shown(url)
    try:
        # The thread cannot be cancelled; its socket timeout bounds it. The outer timeout bounds the wait.
        async with asyncio.timeout(timeout * 4):
            return await asyncio.to_thread(_post, url, body, timeout, context, shown)
    except TimeoutError:
        raise NotifyError(f"webhook {shown}: no answer within {timeout:g} s") from None


def _post(url: str, body: bytes, timeout: float, context: ssl.SSLContext | None, shown: str) -> int:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above: http or https only
        _ascii_url(url), data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "diag", "Accept": "*/*"},
    )  # fmt: skip
    try:
        with opener.open(request, timeout=timeout) as answer:
            answer.read(_ANSWER_BYTES)
            status: int = answer.status
    except urllib.error.HTTPError as error:
        with error:
            text = error.read(_ANSWER_BYTES).decode("utf-8", "replace")
        snippet = sanitize(" ".join(text.split()), limit=120)
        raise NotifyError(
            f"webhook {shown} answered {error.code} {sanitize(str(error.reason))}" + (f": {snippet}" if snippet else "")
        ) from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            text = f"the server's certificate is not trusted: {reason.verify_message}"
        elif isinstance(reason, OSError):
            text = _system_reason(reason)
        else:
            text = str(reason)
        raise NotifyError(f"webhook {shown}: {_one_line(text)}") from None
    except TimeoutError:
        raise NotifyError(f"webhook {shown}: no answer within {timeout:g} s") from None
    except (OSError, HTTPException) as error:
        raise NotifyError(f"webhook {shown}: {sanitize(str(error) or type(error).__name__)}") from None
    if not 200 <= status < 300:
        raise NotifyError(f"webhook {shown} answered {status}, not 2xx")
    return status


def _shown(url: str) -> str:
    """The URL without user info, query and fragment: webhook URLs often carry a secret token."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return sanitize(f"{parts.scheme}://{host}{port}{parts.path}")
