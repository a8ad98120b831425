"""DKIM key records (RFC 6376 §3.6.1) and Microsoft 365's selector CNAMEs.

:func:`parse_key` reads a ``<selector>._domainkey.<domain>`` TXT record: the tags ``v k h s t n p``, the public
key itself with ``cryptography`` (its size for RSA), ``p=`` empty meaning revoked (§3.6.1), ``t=y`` testing.
:func:`lookup_selector` is the process that asks for the selector's CNAME (Microsoft 365 publishes its keys
behind one) and its key record.

Microsoft 365 asks each custom domain for two CNAMEs, ``selector1._domainkey`` and ``selector2._domainkey``.
Microsoft Learn, "Set up DKIM to sign mail from your Microsoft 365 domain" (defender-office-365/
email-authentication-dkim-configure.md), documents two target forms:

* ``selector1-<domain with dots as dashes>._domainkey.<tenant>.onmicrosoft.com`` for domains set up before
  May 2025 (and initial domains);
* ``selector1-<domain with dashes>._domainkey.<tenant>.<c>-v1.dkim.mail.microsoft`` for new custom domains
  since May 2025, ``<c>`` being a "dynamic partition character" Microsoft assigns (``r``, ``n``, ...).

Both are accepted; :class:`M365Form` says which one a CNAME has, and ``Get-DkimSigningConfig``'s
``Selector1CNAME`` stays the authority for the exact value.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Generator

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from diag.frozen import frozen
from diag.policy.lookup import Process, Question, Reply, ReplyStatus, shown
from diag.policy.tags import TagList, parse_tags

__all__ = [
    "M365_SELECTORS",
    "MIN_RSA_BITS",
    "RECOMMENDED_RSA_BITS",
    "DkimIssue",
    "DkimIssueKind",
    "DkimKey",
    "KeyStatus",
    "M365Form",
    "M365Target",
    "SelectorFacts",
    "classify_m365_target",
    "lookup_selector",
    "m365_targets",
    "parse_key",
]

MIN_RSA_BITS = 1024
"""RFC 8301 §3.2: verifiers "MUST NOT consider signatures using RSA keys of less than 1024 bits as valid"."""
RECOMMENDED_RSA_BITS = 2048
"""RFC 8301 §3.2: signers "SHOULD use RSA keys of at least 2048 bits"."""
M365_SELECTORS = ("selector1", "selector2")


class DkimIssueKind(enum.StrEnum):
    """A problem with a key record."""

    SYNTAX = "syntax"  # the tag list is malformed
    VERSION = "version"  # v= present but not DKIM1, or not the first tag (§3.6.1)
    BAD_KEY = "bad-key"  # p= is not base64 or not a key of its type
    UNKNOWN_KEY_TYPE = "unknown-key-type"  # k= other than rsa or ed25519 (RFC 8463)
    WEAK_KEY = "weak-key"  # RSA below 1024 bits: signatures are not valid (RFC 8301 §3.2)
    SHORT_KEY = "short-key"  # RSA below 2048 bits (RFC 8301 §3.2 SHOULD)
    SHA1_ONLY = "sha1-only"  # h=sha1 only: RFC 8301 §3.1 forbids rsa-sha1 for verifying
    NOT_EMAIL = "not-email"  # s= excludes email


@frozen
class DkimIssue:
    """One problem: its kind and the details for a message."""

    kind: DkimIssueKind
    detail: str = ""


@frozen
class DkimKey:
    """A parsed key record.

    Attributes:
        text: as published.
        key_type: ``k`` (``rsa`` by default).
        bits: the key size (RSA modulus bits; 256 for Ed25519), None when the key could not be read.
        revoked: ``p=`` is empty: the key was revoked (§3.6.1).
        testing: ``t=y``: the domain is testing DKIM; verifiers treat signatures as unsigned mail (§3.6.1).
        strict: ``t=s``: the ``i=`` domain must equal ``d=``.
        hashes: ``h`` (all hashes allowed when empty).
        services: ``s`` (``*`` by default).
        notes: ``n``.
        issues: problems, in order.
    """

    text: str
    key_type: str = "rsa"
    bits: int | None = None
    revoked: bool = False
    testing: bool = False
    strict: bool = False
    hashes: tuple[str, ...] = ()
    services: tuple[str, ...] = ("*",)
    notes: str = ""
    issues: tuple[DkimIssue, ...] = ()

    @property
    def usable(self) -> bool:
        """A key verifiers would use: readable, not revoked, not too weak, for email."""
        blocking = (DkimIssueKind.SYNTAX, DkimIssueKind.VERSION, DkimIssueKind.BAD_KEY,
                    DkimIssueKind.UNKNOWN_KEY_TYPE, DkimIssueKind.WEAK_KEY, DkimIssueKind.NOT_EMAIL)  # fmt: skip
        return not self.revoked and not any(i.kind in blocking for i in self.issues)


def _load_rsa(der: bytes) -> rsa.RSAPublicKey | None:
    """RFC 6376 §3.6.1 publishes a SubjectPublicKeyInfo; some publishers put a bare PKCS#1 RSAPublicKey."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            return None
    return key if isinstance(key, rsa.RSAPublicKey) else None


def _value(tags: TagList, name: str, default: str) -> str:
    tag = tags.get(name, case_sensitive=True)
    return tag.value if tag is not None and tag.value else default


def parse_key(text: str) -> DkimKey:
    """Parse a DKIM key record. Never raises."""
    tags = parse_tags(text, case_sensitive=True)  # §3.2: "Tag names are case-sensitive"
    issues = [DkimIssue(DkimIssueKind.SYNTAX, f"at {i.position}: {i.message}") for i in tags.issues]
    version = tags.get("v", case_sensitive=True)
    if version is not None and (version.value != "DKIM1" or tags.tags[0] != version):
        issues.append(DkimIssue(DkimIssueKind.VERSION, "v=DKIM1 must be the first tag when present"))
    key_type = _value(tags, "k", "rsa").lower()
    hashes = tuple(h.strip().lower() for h in _value(tags, "h", "").split(":") if h.strip())
    services = tuple(s.strip().lower() for s in _value(tags, "s", "*").split(":"))
    flags = tuple(f.strip().lower() for f in _value(tags, "t", "").split(":"))
    notes = _value(tags, "n", "")
    if "*" not in services and "email" not in services:
        issues.append(DkimIssue(DkimIssueKind.NOT_EMAIL, f"s={':'.join(services)}"))
    if hashes and "sha256" not in hashes:
        issues.append(DkimIssue(DkimIssueKind.SHA1_ONLY, f"h={':'.join(hashes)}"))
    p_tag = tags.get("p", case_sensitive=True)
    bits = None
    revoked = False
    if p_tag is None:
        issues.append(DkimIssue(DkimIssueKind.BAD_KEY, "the required p= tag is missing"))
    elif not re.sub(r"\s", "", p_tag.value):
        revoked = True
    else:
        bits = _key_bits(re.sub(r"\s", "", p_tag.value), key_type, issues)
    return DkimKey(text, key_type, bits, revoked, "y" in flags, "s" in flags, hashes, services, notes, tuple(issues))


def _key_bits(data: str, key_type: str, issues: list[DkimIssue]) -> int | None:
    try:
        der = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        issues.append(DkimIssue(DkimIssueKind.BAD_KEY, "p= is not valid base64"))
        return None
    if key_type == "ed25519":
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(der)
        except ValueError:
            issues.append(DkimIssue(DkimIssueKind.BAD_KEY, "p= is not a 32-byte Ed25519 key (RFC 8463)"))
            return None
        return 256
    if key_type != "rsa":
        issues.append(DkimIssue(DkimIssueKind.UNKNOWN_KEY_TYPE, f"k={shown(key_type, 20)}"))
        return None
    key = _load_rsa(der)
    if key is None:
        issues.append(DkimIssue(DkimIssueKind.BAD_KEY, "p= is not an RSA public key"))
        return None
    if key.key_size < MIN_RSA_BITS:
        issues.append(DkimIssue(DkimIssueKind.WEAK_KEY, f"{key.key_size} bits"))
    elif key.key_size < RECOMMENDED_RSA_BITS:
        issues.append(DkimIssue(DkimIssueKind.SHORT_KEY, f"{key.key_size} bits"))
    return key.key_size


class KeyStatus(enum.StrEnum):
    """What the key lookup at a selector found."""

    FOUND = "found"
    MULTIPLE = "multiple"  # more than one key record: verifiers may pick either (§3.6.2.2)
    NO_KEY = "no-key"  # the name exists, no key record there
    NXDOMAIN = "nxdomain"  # nothing at the name (or the CNAME points nowhere)
    DNS_ERROR = "dns-error"


@frozen
class SelectorFacts:
    """One selector of a domain.

    Attributes:
        domain, selector: what was asked.
        name: ``<selector>._domainkey.<domain>``.
        cname_target: where the name's CNAME points, or None without one.
        status: what the key lookup found.
        key: the parsed key when there was exactly one.
        texts: the key records (two or more for MULTIPLE).
        detail: the resolver's words for a DNS error.
    """

    domain: str
    selector: str
    name: str
    cname_target: str | None
    status: KeyStatus
    key: DkimKey | None = None
    texts: tuple[str, ...] = ()
    detail: str = ""


def lookup_selector(domain: str, selector: str) -> Process[SelectorFacts]:
    """The process that asks for ``<selector>._domainkey.<domain>``'s CNAME and key record."""
    return Process(_lookup_selector(domain.rstrip(".").lower(), selector.lower()))


def _lookup_selector(domain: str, selector: str) -> Generator[Question, Reply, SelectorFacts]:
    name = f"{selector}._domainkey.{domain}"
    cname = yield Question(name, "CNAME")
    target = cname.records[0].rstrip(".").lower() if cname.status is ReplyStatus.OK and cname.records else None
    reply = yield Question(name, "TXT")
    if not reply.status.answered:
        return SelectorFacts(domain, selector, name, target, KeyStatus.DNS_ERROR, detail=reply.detail or reply.status)
    if reply.status is ReplyStatus.NXDOMAIN:
        return SelectorFacts(domain, selector, name, target, KeyStatus.NXDOMAIN)
    # A key record is a tag list with p=; other TXT strings at the name are not keys (§3.6.2.2).
    texts = tuple(t for t in reply.records if parse_tags(t, case_sensitive=True).get("p", case_sensitive=True))
    if not texts:
        return SelectorFacts(domain, selector, name, target, KeyStatus.NO_KEY)
    if len(texts) > 1:
        return SelectorFacts(domain, selector, name, target, KeyStatus.MULTIPLE, texts=texts)
    return SelectorFacts(domain, selector, name, target, KeyStatus.FOUND, parse_key(texts[0]), texts)


class M365Form(enum.StrEnum):
    """Which documented form a Microsoft 365 selector CNAME target has."""

    ONMICROSOFT = "onmicrosoft"  # selector1-<domain>._domainkey.<tenant>.onmicrosoft.com (before May 2025)
    DKIM_MAIL_MICROSOFT = "dkim.mail.microsoft"  # selector1-<domain>._domainkey.<tenant>.<c>-v1.dkim.mail.microsoft
    OTHER = "other"  # neither: not Microsoft 365's key, or for another domain


@frozen
class M365Target:
    """A selector CNAME target read as Microsoft 365's.

    Attributes:
        form: which documented form it has.
        tenant: the ``*.onmicrosoft.com`` prefix it names, when it has a documented form.
        for_domain: its ``selector1-<domain-with-dashes>`` part names this domain (a CNAME copied from another
            domain's setup points at that domain's key).
        partition: the ``<c>`` of the May 2025 form.
    """

    form: M365Form
    tenant: str | None = None
    for_domain: bool = False
    partition: str | None = None


_ONMICROSOFT = re.compile(r"(selector[12])-([a-z0-9-]+)\._domainkey\.([a-z0-9-]+)\.onmicrosoft\.com\Z")
_DKIM_MAIL = re.compile(
    r"(selector[12])-([a-z0-9-]+)\._domainkey\.([a-z0-9-]+)\.([a-z0-9])-v\d+\.dkim\.mail\.microsoft\Z"
)


def m365_targets(domain: str, tenant: str) -> tuple[str, str]:
    """The documented pre-2025 targets of ``selector1`` and ``selector2`` for ``domain`` in tenant
    ``<tenant>.onmicrosoft.com`` (``tenant`` may be given with or without the suffix)."""
    prefix = tenant.lower().removesuffix(".onmicrosoft.com")
    dashed = domain.rstrip(".").lower().replace(".", "-")
    return tuple(f"{s}-{dashed}._domainkey.{prefix}.onmicrosoft.com" for s in M365_SELECTORS)  # type: ignore[return-value]


def classify_m365_target(domain: str, selector: str, target: str) -> M365Target:
    """Read a selector's CNAME target as one of Microsoft 365's documented forms."""
    text = target.rstrip(".").lower()
    dashed = domain.rstrip(".").lower().replace(".", "-")
    for form, pattern in ((M365Form.ONMICROSOFT, _ONMICROSOFT), (M365Form.DKIM_MAIL_MICROSOFT, _DKIM_MAIL)):
        match = pattern.match(text)
        if match:
            partition = match.group(4) if form is M365Form.DKIM_MAIL_MICROSOFT else None
            for_domain = match.group(1) == selector.lower() and match.group(2) == dashed
            return M365Target(form, match.group(3), for_domain, partition)
    return M365Target(M365Form.OTHER)
