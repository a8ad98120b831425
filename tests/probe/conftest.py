"""Shared fixtures of the probe tests: the lab's test PKI on disk (a CA file and server certificates), probes, and
a real Dovecot IMAP server, started once per session on loopback with its own configuration in a temporary
directory (nothing under /etc/dovecot is read or touched); the watcher tests and the end-to-end runs use it.

It listens with STARTTLS on an imap port and with implicit TLS on an imaps port (127.0.0.1), and without TLS at
all on a second address (``ssl = no`` for 127.0.0.2, so STARTTLS is not offered there). Users come from a
passwd-file; mail is Maildir; every mailbox has a Junk folder marked SPECIAL-USE ``\\Junk`` and a Trash folder.
XOAUTH2 is checked by Dovecot's own ``oauth2`` passdb against a token introspection endpoint this fixture serves
(RFC 7662, ``introspection_mode = post``): a real server-side check, not a mock.

Without /usr/sbin/dovecot the tests that need it are skipped with the reason; .ci/run installs dovecot-imapd.
"""

from __future__ import annotations

import grp
import imaplib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from diag.lab.pki import TestPKI
from diag.probe.message import Probe, build_probe

ProbeFactory = Callable[..., Probe]
Issuer = Callable[[str], tuple[Path, Path]]


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPKI, Path]:
    return TestPKI.create(), tmp_path_factory.mktemp("probe-pki")


@pytest.fixture(scope="session")
def ca_file(pki_dir: tuple[TestPKI, Path]) -> Path:
    """The root CA certificate: what a client trusts (``--ca-file``)."""
    pki, directory = pki_dir
    return pki.write_root(directory / "root.pem")


@pytest.fixture(scope="session")
def issue(pki_dir: tuple[TestPKI, Path]) -> Issuer:
    """Issue a server certificate for a name; returns its chain and key files."""
    pki, directory = pki_dir

    def issue(name: str) -> tuple[Path, Path]:
        return pki.issue([name]).write(directory, name)

    return issue


@pytest.fixture
def make_probe() -> ProbeFactory:
    """Build a probe from john@contoso.com to sun@tailspintoys.com (keyword arguments override)."""

    def make(**options: object) -> Probe:
        values: dict[str, object] = {
            "run": "run-1",
            "name": "John to Sun",
            "sender": "john@contoso.com",
            "recipient": "sun@tailspintoys.com",
            "key": b"probe test key, 32 bytes long!!!",
            "now": datetime.now(UTC),
        }
        values.update(options)
        return build_probe(**values)  # type: ignore[arg-type]

    return make


DOVECOT = Path("/usr/sbin/dovecot")
IMAP_NAME = "imap.probe.test"
USERS = {"john@contoso.com": "john-pass", "bob@contoso.com": "bob-pass"}
TOKENS = {"valid-token-for-bob": "bob@contoso.com"}


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class Introspection:
    """The OAuth2 token introspection endpoint Dovecot asks (RFC 7662): which tokens are active, for whom."""

    server: ThreadingHTTPServer
    asked: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/introspect"


def start_introspection() -> Introspection:
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            token = form.get("token", [""])[0]
            asked.append(token)
            user = TOKENS.get(token)
            body = json.dumps({"active": True, "username": user} if user else {"active": False}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="introspection", daemon=True).start()
    return Introspection(server, asked)


@dataclass
class Dovecot:
    """A running Dovecot: its ports, CA file, mail root and a way to put messages into mailboxes."""

    imap_port: int
    imaps_port: int
    plain_address: str
    plain_port: int
    ca_file: Path
    mail_root: Path
    introspection: Introspection
    log: Path

    def url(self, folder: str = "INBOX", *, implicit: bool = False) -> str:
        scheme, port = ("imaps", self.imaps_port) if implicit else ("imap", self.imap_port)
        return f"{scheme}://{IMAP_NAME}:{port}/{urllib.parse.quote(folder)}"

    def session(self, user: str) -> imaplib.IMAP4_SSL:
        """A plain imaplib session of the test itself (to deliver and inspect), over imaps."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False
        client = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=context, timeout=10)
        client.login(user, USERS[user])
        return client

    def append(self, user: str, content: bytes, folder: str = "INBOX") -> None:
        """Deliver ``content`` to ``user``'s ``folder`` (IMAP APPEND: Dovecot stores it, as delivery would)."""
        client = self.session(user)
        try:
            typ, data = client.append(f'"{folder}"', None, None, content)
            assert typ == "OK", data
        finally:
            client.logout()

    def count(self, user: str, folder: str = "INBOX") -> int:
        client = self.session(user)
        try:
            typ, data = client.select(f'"{folder}"', readonly=True)
            assert typ == "OK", data
            return int(data[0] or b"0")
        finally:
            client.logout()

    def empty(self, user: str) -> None:
        """Remove every message of ``user`` (between tests)."""
        client = self.session(user)
        try:
            for folder in ("INBOX", "Junk", "Trash"):
                typ, data = client.select(f'"{folder}"')
                if typ == "OK" and int(data[0] or b"0"):
                    client.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
                    client.expunge()
        finally:
            client.logout()


def _config(directory: Path, dovecot: Dovecot, chain: Path, key: Path) -> str:
    if os.geteuid() == 0:
        # Dovecot never gives mail access to UID 0; the mailboxes belong to nobody.
        internal = ""
    else:
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        internal = f"default_internal_user = {user}\ndefault_login_user = {user}\ndefault_internal_group = {group}\n"
    return f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {dovecot.log}
{internal}protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{chain}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login xoauth2
# No pause after a failed login (default 2 s): the tests provoke several.
auth_failure_delay = 0
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = oauth2
  mechanisms = xoauth2
  args = {directory}/oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {directory}/passwd
}}
userdb {{
  driver = passwd-file
  args = {directory}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {dovecot.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {dovecot.imaps_port}
    ssl = yes
  }}
  inet_listener plain {{
    address = {dovecot.plain_address}
    port = {dovecot.plain_port}
  }}
}}
# Dovecot delays the next login from an address that failed one (its auth penalty, kept by anvil); the tests
# fail logins on purpose, so the auth process is kept from the penalty socket, which turns the penalty off.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
local {dovecot.plain_address} {{
  ssl = no
}}
"""


@pytest.fixture(scope="session")
def dovecot(issue: Callable[[str], tuple[Path, Path]], ca_file: Path) -> Iterator[Dovecot]:
    if not DOVECOT.exists():
        pytest.skip(f"Dovecot is not installed ({DOVECOT}); install dovecot-imapd (.ci/run does)")
    # Not under pytest's temporary directory: that one is private to us (0700), and Dovecot's auth and mail
    # processes run as other users (dovecot, nobody) that must reach the passwd file and the mailboxes.
    directory = Path(tempfile.mkdtemp(prefix="diag-dovecot-"))
    directory.chmod(0o755)
    try:
        yield from _serve(directory, issue, ca_file)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _serve(directory: Path, issue: Callable[[str], tuple[Path, Path]], ca_file: Path) -> Iterator[Dovecot]:
    for sub in ("run", "state", "mail"):
        (directory / sub).mkdir()
    chain, key = issue(IMAP_NAME)
    introspection = start_introspection()
    server = Dovecot(
        imap_port=free_port(),
        imaps_port=free_port(),
        plain_address="127.0.0.2",
        plain_port=free_port("127.0.0.2"),
        ca_file=ca_file,
        mail_root=directory / "mail",
        introspection=introspection,
        log=directory / "dovecot.log",
    )
    uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    lines = [f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{directory}/mail/{user}" for user, password in USERS.items()]
    (directory / "passwd").write_text("\n".join(lines) + "\n")
    (directory / "oauth2.conf.ext").write_text(
        f"introspection_mode = post\nintrospection_url = {introspection.url}\n"
        "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
    )
    for user in USERS:
        home = directory / "mail" / user
        home.mkdir()
        if os.geteuid() == 0:
            shutil.chown(home, uid, gid)
    conf = directory / "dovecot.conf"
    conf.write_text(_config(directory, server, chain, key))
    process = subprocess.Popen(
        [str(DOVECOT), "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_listening(process, server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        introspection.server.shutdown()


def _wait_listening(process: subprocess.Popen[bytes], server: Dovecot) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            log = server.log.read_text(errors="replace") if server.log.exists() else ""
            raise RuntimeError(f"Dovecot exited with {process.returncode}: {error}{log}")
        try:
            with socket.create_connection(("127.0.0.1", server.imaps_port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("Dovecot did not start listening within 20 s")


@pytest.fixture
def mailboxes(dovecot: Dovecot) -> Iterator[Dovecot]:
    """The Dovecot server with John's and Bob's mailboxes empty before and after the test."""
    for user in USERS:
        dovecot.empty(user)
    yield dovecot
    for user in USERS:
        dovecot.empty(user)
