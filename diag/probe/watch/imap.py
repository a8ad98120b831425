"""An IMAP watcher: ``imap://HOST[:PORT]/FOLDER`` (STARTTLS, mandatory) or ``imaps://HOST[:PORT]/FOLDER``.

The client is the standard library's :mod:`imaplib`, run in one worker thread per watcher. It was chosen over
aioimaplib (2.0.3) because imaplib has STARTTLS (aioimaplib lists the command but has no method for it),
AUTHENTICATE for XOAUTH2, UID MOVE and UID EXPUNGE, and documents ``read``/``readline``/``open`` as methods to
override, which is where every byte from the server is bounded here (security-cases.md PR-02); aioimaplib
buffers a literal of any announced size, handles each line of a chunk by recursion, and is GPL-3.0 (diag is
MIT). imaplib lacks only IDLE before Python 3.14, which is the few lines of :meth:`_Client.idle` (RFC 2177).

What the watcher does, in RFC 3501 terms:

- Credentials are sent only over TLS whose certificate verified for the host name (``ca_file`` or the system
  store): with ``imap://`` a server that does not offer STARTTLS, or greets with PREAUTH before TLS, is refused
  before anything is sent (PR-03). A password goes with LOGIN (AUTHENTICATE PLAIN under LOGINDISABLED); an
  OAuth2 access token with SASL XOAUTH2, the only way Exchange Online accepts.
- ``mark`` notes UIDVALIDITY and UIDNEXT of the watched folder and of the junk folder (SPECIAL-USE ``\\Junk``,
  RFC 6154, or a usual name); ``wait`` fetches only the headers of newer UIDs (``BODY.PEEK[HEADER]``, capped
  with a partial range, never setting ``\\Seen``) and matches them locally: server SEARCH lags on large services.
  It uses IDLE on the watched folder where offered (new mail wakes it), else polls with backoff (NOOP).
- Removal is by UID within an unchanged UIDVALIDITY: ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID
  EXPUNGE`` (UIDPLUS, RFC 4315), so that no other message marked deleted is expunged; else ``UID MOVE`` to the
  Trash folder (RFC 6851); else nothing, and the reason is reported (PR-09).
- Every read is bounded: a line by :data:`_LINE_MAX`, a literal by what was asked for, all bytes of one operation
  by :data:`_OPERATION_BYTES`, and its time by the operation timeout; a server that breaks these ends the watch
  with a WatchError instead of filling memory or hanging.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from diag.frozen import frozen
from diag.probe.judge import MAX_HEADERS, MAX_MESSAGE
from diag.probe.watch.base import JUNK_NAMES, Arrival, Candidate, Removal, Watcher, WatchError

__all__ = ["ImapCredentials", "ImapTarget", "ImapWatcher", "parse_imap_url"]

_T = TypeVar("_T")
_LINE_MAX: Final = 64 * 1024  # a response line (literals excluded); real ones are well under 1 KiB
_LITERAL_SLACK: Final = 1024
_OPERATION_BYTES: Final = 16 * 1024 * 1024  # everything one operation (one poll, one mark) may read
_FETCH_BATCH: Final = 50
_LATE_WINDOW: Final = 200
_LIST_MAX: Final = 2000  # folders examined for the junk folder
_UID: Final = re.compile(rb"\bUID (\d+)")
_LIST_LINE: Final = re.compile(rb'\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)"|NIL) (?P<name>"(?:[^"\\]|\\.)*"|[^\s"]+)$')
_STATUS_UIDNEXT: Final = re.compile(rb"\bUIDNEXT (\d+)")
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@frozen
class ImapTarget:
    """Where to watch: ``host``, ``port``, ``folder``, ``implicit_tls`` (imaps), and the user named in the URL."""

    host: str
    port: int
    folder: str
    implicit_tls: bool
    user: str | None = None

    def __str__(self) -> str:
        scheme = "imaps" if self.implicit_tls else "imap"
        return f"{scheme}://{self.host}:{self.port}/{urllib.parse.quote(self.folder)}"


@frozen
class ImapCredentials:
    """Who logs in: ``user`` with a ``password``, or with an OAuth2 access ``token`` (SASL XOAUTH2)."""

    user: str
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.token is None):
            raise ValueError("give either a password or an OAuth2 token")
        for text in (self.user, self.password or "", self.token or ""):
            if any(char in text for char in "\r\n\0"):
                raise ValueError("credentials must not contain CR, LF or NUL")


def parse_imap_url(url: str) -> ImapTarget:
    """``imap://[user@]HOST[:PORT]/FOLDER`` or ``imaps://…`` (user and folder percent-encoded; folder default
    INBOX). Raises ValueError with a sentence for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("imap", "imaps"):
        raise ValueError(f"{url!r}: the watch URL must start with imap:// or imaps://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: the URL names no host")
    if parts.password is not None:
        raise ValueError(f"{url!r}: a password does not belong in the URL; give it in the environment")
    folder = urllib.parse.unquote(parts.path.lstrip("/")) or "INBOX"
    if not folder.isascii() or not folder.isprintable():
        # RFC 3501 §5.1.3: other names travel in modified UTF-7, which imaplib does not encode.
        raise ValueError(f"{url!r}: the folder name must be printable ASCII")
    implicit = parts.scheme == "imaps"
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return ImapTarget(parts.hostname, port or (993 if implicit else 143), folder, implicit, user)


class _Client(imaplib.IMAP4):
    """imaplib with every read bounded in size and time, connecting to ``address`` while verifying ``host``."""

    def __init__(self, target: ImapTarget, address: str | None, context: ssl.SSLContext, timeout: float) -> None:
        self._address = address
        self._context = context
        self._implicit = target.implicit_tls
        self._timeout = timeout
        self._limit_bytes = _OPERATION_BYTES
        self._until = time.monotonic() + timeout
        self.literal_max = MAX_MESSAGE
        super().__init__(target.host, target.port, timeout=timeout)

    # -- the documented override points (imaplib: "You may override this method") --

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host, self.port = host, port
        sock = socket.create_connection((self._address or host, port), timeout)
        if self._implicit:
            try:
                sock = self._context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.file = sock.makefile("rb")

    def readline(self) -> bytes:
        self._tick()
        line = _bytes(self.file.readline(_LINE_MAX + 1))
        self._spend(len(line))
        if len(line) > _LINE_MAX:
            raise self.abort(f"the server sent a line longer than {_LINE_MAX} bytes")
        if not line:
            raise self.abort("the server closed the connection")
        return line

    def read(self, size: int) -> bytes:
        if size > self.literal_max + _LITERAL_SLACK:
            raise self.abort(f"the server announced {size} bytes where at most {self.literal_max} were asked for")
        self._tick()
        data = _bytes(self.file.read(size))
        self._spend(len(data))
        return data

    # -- bounds --

    def begin(self, seconds: float | None = None) -> None:
        """Start an operation: a fresh byte budget and time limit, and no leftovers of the last one."""
        self._limit_bytes = _OPERATION_BYTES
        self._until = time.monotonic() + (seconds if seconds is not None else self._timeout)
        self.untagged_responses.clear()

    def _readable(self, seconds: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted bytes wait in the TLS layer, where select cannot see them
        ready, _, _ = select.select([self.sock], [], [], seconds)
        return bool(ready)

    def _tick(self) -> None:
        remaining = self._until - time.monotonic()
        if remaining <= 0:
            raise self.abort("no complete answer from the server in time")
        self.sock.settimeout(min(remaining, self._timeout))

    def _spend(self, count: int) -> None:
        self._limit_bytes -= count
        if self._limit_bytes < 0:
            raise self.abort(f"the server sent more than {_OPERATION_BYTES} bytes for one request")

    # -- IDLE (RFC 2177), which imaplib lacks before Python 3.14 --

    def idle(self, seconds: float) -> None:
        """IDLE for up to ``seconds``; returns early when the server reports new mail (EXISTS or RECENT)."""
        tag = b"DIAGIDLE"  # not imaplib's tag pattern, so imaplib never mistakes its completion for its own
        self.send(tag + b" IDLE\r\n")
        self.begin()
        while True:  # the continuation request; untagged lines may come first
            line = self.readline()
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise self.abort(f"IDLE refused: {_text(line)}")
        self.begin(seconds + self._timeout)
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            # Wait with select, not a socket timeout: a socket file that timed out cannot be read again.
            if not self._readable(remaining):
                break
            if re.match(rb"\* \d+ (EXISTS|RECENT)", self.readline()):
                break
        self.send(b"DONE\r\n")
        self.begin()
        while not self.readline().startswith(tag + b" "):
            pass


def _bytes(data: bytes | str) -> bytes:
    """What the socket file read: always bytes (it is opened "rb"); the check keeps the type checker honest."""
    return data if isinstance(data, bytes) else data.encode("latin-1")


def _number(value: object) -> int | None:
    """An untagged response's number (``b"42"``), or None when absent or not a number."""
    if isinstance(value, bytes) and value.strip().isdigit():
        return int(value)
    return None


def _text(data: bytes | str | None) -> str:
    """Server text for a one-line message: decoded, control characters replaced, bounded."""
    if data is None:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _UNSAFE.sub("?", " ".join(text.split()))[:300]


def _quote(name: str) -> str:
    """An IMAP quoted string (RFC 3501 §4.3): imaplib sends arguments as given."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class _FolderState:
    name: str
    junk: bool
    uidvalidity: int = 0
    uidnext: int = 1
    readonly: bool = False
    recent: list[int] = field(default_factory=list)  # the newest UIDs already there at the mark


class ImapWatcher(Watcher):
    """Watch ``target.folder`` (and the junk folder) of an IMAP mailbox.

    ``address``: connect there instead of resolving ``target.host`` (the name still verified and sent as SNI).
    ``timeout``: bound of each operation (connect, login, one poll). ``ca_file``: CAs to trust instead of the
    system store.
    """

    def __init__(
        self,
        target: ImapTarget,
        credentials: ImapCredentials,
        *,
        timeout: float,
        ca_file: Path | None = None,
        address: str | None = None,
        poll_min: float = 1.0,
        poll_max: float = 30.0,
    ) -> None:
        super().__init__(poll_min=poll_min, poll_max=poll_max)
        self.target, self.credentials, self.timeout = target, credentials, timeout
        self.ca_file, self.address = ca_file, address
        self._executor: ThreadPoolExecutor | None = None
        self._client: _Client | None = None
        self._folders: list[_FolderState] = []
        self._trash: str | None = None
        self._selected: str | None = None
        self._broken = False

    @property
    def where(self) -> str:
        return f"{self.target} (user {self.credentials.user})"

    # -- plumbing: one worker thread, every imaplib error a WatchError --

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diag-imap")
        try:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
            except (imaplib.IMAP4.error, OSError, ssl.SSLError, ValueError, asyncio.CancelledError):
                self._broken = True  # the session may be in any state now: never speak on it again
                raise
        except WatchError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise WatchError(
                f"{self.where}: the server's certificate does not verify: {_text(exc.verify_message)}"
            ) from None
        except (imaplib.IMAP4.error, OSError, ssl.SSLError, ValueError) as exc:
            raise WatchError(f"{self.where}: {self._scrub(_text(str(exc)))}") from None

    def _scrub(self, text: str) -> str:
        for secret in (self.credentials.password, self.credentials.token):
            if secret:
                text = text.replace(secret, "***")
        return text

    @property
    def _imap(self) -> _Client:
        if self._client is None:
            raise WatchError(f"{self.where}: not connected (open() first)")
        return self._client

    # -- open: connect, TLS, log in, find the folders --

    async def _open(self) -> None:
        context = await asyncio.to_thread(self._tls_context)
        self._client = await self._run(self._connect, context)
        await self._run(self._login)
        await self._run(self._find_folders)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise WatchError(f"cannot load the CA certificates {self.ca_file}: {exc}") from None

    def _connect(self, context: ssl.SSLContext) -> _Client:
        try:
            client = _Client(self.target, self.address, context, self.timeout)
        except TimeoutError:
            raise WatchError(f"{self.where}: no connection or greeting within {self.timeout:g} s") from None
        if not self.target.implicit_tls:
            # PR-03: nothing leaves this host before TLS. PREAUTH in clear would mean a session without it.
            if client.state != "NONAUTH":
                client.shutdown()
                raise WatchError(f"{self.where}: the server greets with PREAUTH before TLS; refusing the session")
            if "STARTTLS" not in client.capabilities:
                client.shutdown()
                raise WatchError(
                    f"{self.where}: the server does not offer STARTTLS; refusing to send credentials in clear "
                    "(use imaps:// if it listens for implicit TLS)"
                )
            client.begin()
            client.starttls(context)
        return client

    def _login(self) -> None:
        client, credentials = self._imap, self.credentials
        client.begin()
        try:
            if credentials.token is not None:
                sasl = f"user={credentials.user}\x01auth=Bearer {credentials.token}\x01\x01".encode()
                answers = iter([sasl])
                # RFC 7628 §3.2.3 style: after a failure the server sends an error challenge, answered empty.
                client.authenticate("XOAUTH2", lambda _challenge: next(answers, b""))
            elif "LOGINDISABLED" in client.capabilities:
                plain = f"\0{credentials.user}\0{credentials.password}".encode()
                client.authenticate("PLAIN", lambda _challenge: plain)
            else:
                client.login(_quote(credentials.user), credentials.password or "")
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise WatchError(f"{self.where}: login refused: {self._scrub(_text(str(exc)))}") from None
        # Servers announce more after login (UIDPLUS, MOVE, SPECIAL-USE); imaplib keeps the first list.
        client.begin()
        typ, data = client.capability()
        if typ == "OK" and data and isinstance(data[-1], bytes):
            client.capabilities = tuple(data[-1].decode("ascii", "replace").upper().split())

    def _find_folders(self) -> None:
        client = self._imap
        client.begin()
        typ, data = client.list('""', '"*"')
        junk: list[str] = []
        by_name: list[str] = []
        trash: str | None = None
        names: set[str] = set()
        for line in (data or [])[:_LIST_MAX]:
            if not isinstance(line, bytes):
                continue  # a name sent as a literal: not one of ours to find
            match = _LIST_LINE.search(line)
            if match is None:
                continue
            flags = match.group("flags").lower().split()
            raw = match.group("name")
            name = raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\") if raw.startswith(b'"') else raw
            text = name.decode("ascii", "replace")
            names.add(text)
            if b"\\noselect" in flags or b"\\nonexistent" in flags:
                continue
            if b"\\junk" in flags:
                junk.append(text)
            elif re.split(r"[./]", text)[-1].lower() in JUNK_NAMES:
                by_name.append(text)
            if b"\\trash" in flags or (trash is None and text.lower() in ("trash", "deleted items")):
                trash = text
        if typ != "OK":
            raise WatchError(f"{self.where}: the folders cannot be listed")
        wanted = self.target.folder
        self._folders = [_FolderState(wanted, junk=wanted in junk or wanted in by_name)]
        for name in junk or by_name[:1]:  # SPECIAL-USE is authoritative; a name is a fallback
            if name != wanted:
                self._folders.append(_FolderState(name, junk=True))
        self._trash = trash

    # -- mark --

    async def _mark(self) -> None:
        await self._run(self._mark_folders)

    def _mark_folders(self) -> None:
        kept: list[_FolderState] = []
        for index, folder in enumerate(self._folders):
            try:
                exists = self._select(folder)
            except WatchError:
                if index == 0:
                    raise
                continue  # a junk folder that cannot be opened is not watched; the main one must be
            if exists:
                low = max(1, exists - _LATE_WINDOW + 1)
                folder.recent = self._uids(f"{low}:*", by_uid=False)
            kept.append(folder)
        self._folders = kept
        self._select(self._folders[0])

    def _select(self, folder: _FolderState) -> int:
        """SELECT ``folder`` (read-write: removal needs it; BODY.PEEK keeps \\Seen); returns EXISTS."""
        client = self._imap
        client.begin()
        try:
            typ, data = client.select(_quote(folder.name), readonly=folder.readonly)
        except imaplib.IMAP4.readonly:
            # A folder the user may not change (PR-09): watched all the same, removal is reported impossible.
            folder.readonly = True
            client.begin()
            typ, data = client.select(_quote(folder.name), readonly=True)
        if typ != "OK":
            raise WatchError(
                f"{self.where}: folder {folder.name!r} cannot be opened: {_text(data[-1] if data else '')}"
            )
        uidvalidity = _number(client.untagged_responses.get("UIDVALIDITY", [b"0"])[-1]) or 0
        uidnext = _number(client.untagged_responses.get("UIDNEXT", [None])[-1])
        exists = (_number(data[-1]) or 0) if data else 0
        if folder.uidvalidity == 0:  # the mark: remember where new mail starts
            folder.uidvalidity = uidvalidity
            if uidnext is not None:
                folder.uidnext = uidnext
            else:  # RFC 3501 §6.3.1: UIDNEXT may be missing; the highest UID + 1 says the same
                highest = self._uids("*", by_uid=False) if exists else []
                folder.uidnext = max(highest, default=0) + 1
        elif uidvalidity != folder.uidvalidity:
            raise WatchError(f"{self.where}: folder {folder.name!r} was recreated (UIDVALIDITY changed)")
        self._selected = folder.name
        return exists

    def _uids(self, sequence: str, *, by_uid: bool) -> list[int]:
        client = self._imap
        if by_uid:
            typ, data = client.uid("FETCH", sequence, "(UID)")
        else:
            typ, data = client.fetch(sequence, "(UID)")
        if typ != "OK":
            raise WatchError(f"{self.where}: FETCH refused: {_text(data[-1] if data else '')}")
        found = []
        for item in data or []:
            raw = item[0] if isinstance(item, tuple) else item
            if isinstance(raw, bytes) and (match := _UID.search(raw)):
                found.append(int(match.group(1)))
        return found

    # -- wait --

    async def _fresh(self) -> Sequence[Candidate]:
        return await self._run(self._poll)

    def _poll(self) -> list[Candidate]:
        found: list[Candidate] = []
        main = self._folders[0]
        for folder in self._folders:
            client = self._imap
            client.begin()
            if folder is not main:
                if not folder.recent and not self._has_new(folder):
                    continue
                self._select(folder)
            else:
                if self._selected != main.name:
                    self._select(main)
                client.noop()  # lets the server announce new mail (RFC 3501 §6.1.2)
            found.extend(self._new_in(folder))
        if self._selected != main.name:
            self._select(main)
        return found

    def _has_new(self, folder: _FolderState) -> bool:
        """STATUS (UIDNEXT) of a folder that is not selected: has anything arrived since the mark?"""
        typ, data = self._imap.status(_quote(folder.name), "(UIDNEXT)")
        line = data[0] if typ == "OK" and data and isinstance(data[0], bytes) else b""
        match = _STATUS_UIDNEXT.search(line)
        return match is None or int(match.group(1)) > folder.uidnext

    def _new_in(self, folder: _FolderState) -> list[Candidate]:
        client = self._imap
        client.begin()
        uids = [uid for uid in self._uids(f"{folder.uidnext}:*", by_uid=True) if uid >= folder.uidnext]
        recent, folder.recent = folder.recent, []
        wanted = [uid for uid in (*recent, *uids) if self._handle(folder, uid) not in self._seen]
        found: list[Candidate] = []
        for start in range(0, len(wanted), _FETCH_BATCH):
            batch = wanted[start : start + _FETCH_BATCH]
            client.begin()
            for uid, content in self._fetch(batch, f"BODY.PEEK[HEADER]<0.{MAX_HEADERS}>", MAX_HEADERS):
                found.append(Candidate(self._handle(folder, uid), folder.name, folder.junk, content))
        if uids:
            folder.uidnext = max(uids) + 1
        return found

    def _fetch(self, uids: Sequence[int], item: str, limit: int) -> list[tuple[int, bytes]]:
        client = self._imap
        client.literal_max = limit
        typ, data = client.uid("FETCH", ",".join(map(str, uids)), f"(UID {item})")
        if typ != "OK":
            raise WatchError(f"{self.where}: FETCH refused: {_text(data[-1] if data else '')}")
        found = []
        for entry in data or []:
            if isinstance(entry, tuple) and len(entry) == 2 and (match := _UID.search(entry[0])):
                found.append((int(match.group(1)), bytes(entry[1])[:limit]))
        return found

    def _handle(self, folder: _FolderState, uid: int) -> str:
        return f"{folder.name}\0{folder.uidvalidity}:{uid}"

    async def _read(self, candidate: Candidate) -> bytes:
        return await self._run(self._read_whole, candidate)

    def _read_whole(self, candidate: Candidate) -> bytes:
        folder = next(folder for folder in self._folders if folder.name == candidate.folder)
        uid = int(candidate.handle.rsplit(":", 1)[1])
        if self._selected != folder.name:
            self._select(folder)
        self._imap.begin()
        content = dict(self._fetch([uid], f"BODY.PEEK[]<0.{MAX_MESSAGE}>", MAX_MESSAGE)).get(uid)
        if self._selected != self._folders[0].name:
            self._select(self._folders[0])
        return content if content is not None else candidate.headers

    async def _pause(self, seconds: float) -> None:
        if self._client is not None and "IDLE" in self._client.capabilities:
            await self._run(self._idle, seconds)
        else:
            await asyncio.sleep(seconds)

    def _idle(self, seconds: float) -> None:
        client = self._imap
        if self._selected != self._folders[0].name:
            self._select(self._folders[0])
        client.idle(seconds)

    # -- remove --

    async def _remove(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]:
        return await self._run(self._expunge, arrivals)

    def _expunge(self, arrivals: Sequence[Arrival]) -> tuple[Removal, ...]:
        client = self._imap
        done: list[Removal] = []
        for folder in self._folders:
            mine = [arrival for arrival in arrivals if arrival.handle.startswith(f"{folder.name}\0")]
            if not mine:
                continue
            try:
                self._select(folder)  # raises when UIDVALIDITY changed: then no UID is trusted
            except WatchError as exc:
                done.extend(Removal(arrival, False, str(exc)) for arrival in mine)
                continue
            uids = ",".join(arrival.handle.rsplit(":", 1)[1] for arrival in mine)
            client.begin()
            if folder.readonly:
                done.extend(Removal(arrival, False, f"folder {folder.name} is read-only") for arrival in mine)
                continue
            if "UIDPLUS" in client.capabilities:
                typ, data = client.uid("STORE", uids, "+FLAGS.SILENT", "(\\Deleted)")
                if typ == "OK":
                    typ, data = client.uid("EXPUNGE", uids)
                how = f"expunged from {folder.name}"
            elif "MOVE" in client.capabilities and self._trash is not None and self._trash != folder.name:
                typ, data = client.uid("MOVE", uids, _quote(self._trash))
                how = f"moved from {folder.name} to {self._trash}"
            else:
                reason = "the server offers neither UIDPLUS nor MOVE; EXPUNGE would also remove other deleted mail"
                done.extend(Removal(arrival, False, reason) for arrival in mine)
                continue
            ok = typ == "OK"
            detail = how if ok else f"{folder.name}: {_text(data[-1] if data else '')}"
            done.extend(Removal(arrival, ok, detail) for arrival in mine)
        if self._folders and self._selected != self._folders[0].name:
            self._select(self._folders[0])
        return tuple(done)

    # -- close --

    async def _close(self) -> None:
        client, executor = self._client, self._executor
        self._client = self._executor = None
        if executor is None:
            return
        if client is not None and self._broken:
            _shutdown(client)  # from here, not the worker: a cancelled wait may still be reading in it
        elif client is not None:
            try:
                async with asyncio.timeout(min(self.timeout, 5.0) + 1.0):
                    await asyncio.get_running_loop().run_in_executor(executor, _logout, client)
            except TimeoutError:
                # An operation of a cancelled wait still holds the thread: cut its socket to end it.
                _shutdown(client)
        executor.shutdown(wait=False)


def _logout(client: _Client) -> None:
    try:
        client.begin(5.0)
        client.logout()
    except (imaplib.IMAP4.error, OSError, ssl.SSLError):
        _shutdown(client)


def _shutdown(client: _Client) -> None:
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the server or by a logout that got that far
    finally:
        client.sock.close()
