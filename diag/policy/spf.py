"""SPF (RFC 7208): parse a record, walk the policy tree, and evaluate ``check_host()`` for an address.

Three things, all without I/O:

* :func:`parse_record` reads one ``v=spf1`` record into terms with their positions; a syntax error is a typed
  :class:`SyntaxIssue` with the offset where it starts, never an exception.
* :func:`analyze` is a :class:`~diag.policy.lookup.Process` that fetches the record and everything it includes
  or redirects to, and returns the tree (:class:`SpfNode`, each with its own record and lookup count) with the
  problems found: more than 10 DNS-querying terms counted recursively (§4.6.4), more than 2 void lookups, an
  ``mx`` with more than 10 names, includes that do not resolve, loops, ``+all``/``?all``, no ``all`` and no
  ``redirect``.
* :func:`check_host` is a :class:`~diag.policy.lookup.Process` that evaluates the policy for one client address
  exactly as a receiver does (§4, §5, §6), to one of the seven results, with the limits enforced as the RFC
  says (a limit exceeded is ``permerror``; no answer from DNS is ``temperror``).

``analyze`` counts every DNS-querying term of the whole tree (the worst case a receiver may meet); ``check_host``
counts only what one evaluation reaches (it stops at the first match). Both are reported, because the first is
what the RFC limit is about and the second is what a receiver will do for this address.

Macros (§7) are parsed and expanded for ``s l o d i p v h`` (and ``c r t``, which §7.2 allows only in ``exp``
text, are refused elsewhere). ``%{p}`` expands to ``unknown`` without a PTR lookup: §7.3 allows that value
when no validated name is determined, and says the macro SHOULD NOT be used at all.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import urllib.parse
from collections.abc import Generator
from dataclasses import dataclass, field

from diag.frozen import frozen
from diag.policy.lookup import MAX_TEXT, Process, Question, Reply, ReplyStatus, shown
from diag.policy.tags import SyntaxIssue

__all__ = [
    "DNS_LOOKUP_LIMIT",
    "MX_NAME_LIMIT",
    "VOID_LOOKUP_LIMIT",
    "Directive",
    "MacroContext",
    "MacroError",
    "Mechanism",
    "Modifier",
    "NodeStatus",
    "Qualifier",
    "SpfAnalysis",
    "SpfIssue",
    "SpfIssueKind",
    "SpfMatch",
    "SpfNode",
    "SpfReason",
    "SpfRecord",
    "SpfResult",
    "SpfVerdict",
    "SyntaxIssue",
    "analyze",
    "check_host",
    "expand",
    "parse_record",
    "select_record",
]

DNS_LOOKUP_LIMIT = 10
"""Terms that cause DNS queries (include, a, mx, ptr, exists, redirect) per evaluation (RFC 7208 §4.6.4)."""
VOID_LOOKUP_LIMIT = 2
"""Lookups answered NXDOMAIN or with no records, per evaluation (RFC 7208 §4.6.4)."""
MX_NAME_LIMIT = 10
"""MX names one ``mx`` mechanism may look up addresses for (RFC 7208 §4.6.4)."""
PTR_NAME_LIMIT = 10
"""PTR names a ``ptr`` mechanism or ``%{p}`` considers; further ones are ignored (RFC 7208 §4.6.4)."""

_MAX_NODES = 64  # records one analysis fetches at most: past the limit of 10 the tree is only shown, not needed
_MAX_DEPTH = 10  # include/redirect nesting one analysis follows (loops are caught before this)


class SpfResult(enum.StrEnum):
    """The seven results of ``check_host()`` (RFC 7208 §2.6)."""

    PASS = "pass"  # noqa: S105 - an SPF result, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


class Qualifier(enum.StrEnum):
    """A directive's qualifier (§4.6.2) and the result it gives when its mechanism matches."""

    PASS = "+"  # noqa: S105 - a qualifier, not a password
    FAIL = "-"
    SOFTFAIL = "~"
    NEUTRAL = "?"

    @property
    def result(self) -> SpfResult:
        return {
            Qualifier.PASS: SpfResult.PASS,
            Qualifier.FAIL: SpfResult.FAIL,
            Qualifier.SOFTFAIL: SpfResult.SOFTFAIL,
            Qualifier.NEUTRAL: SpfResult.NEUTRAL,
        }[self]


class Mechanism(enum.StrEnum):
    """The mechanisms of §5."""

    ALL = "all"
    INCLUDE = "include"
    A = "a"
    MX = "mx"
    PTR = "ptr"
    IP4 = "ip4"
    IP6 = "ip6"
    EXISTS = "exists"

    @property
    def queries_dns(self) -> bool:
        """Counts toward the limit of 10 DNS-querying terms (§4.6.4); ``redirect`` counts too."""
        return self in (Mechanism.INCLUDE, Mechanism.A, Mechanism.MX, Mechanism.PTR, Mechanism.EXISTS)


@frozen
class Directive:
    """A qualifier and a mechanism (§4.6.1).

    Attributes:
        qualifier: ``+`` unless written otherwise.
        mechanism: which mechanism.
        domain_spec: the domain-spec as written (macros unexpanded), None when omitted.
        network: for ip4/ip6, the network (``192.0.2.0/24``); None otherwise.
        cidr4, cidr6: for a/mx, the prefix lengths of the dual-cidr-length, None when omitted.
        text: the directive as written.
        position: its offset in the record.
    """

    qualifier: Qualifier
    mechanism: Mechanism
    domain_spec: str | None = None
    network: str | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    text: str = ""
    position: int = 0


@frozen
class Modifier:
    """A ``name=value`` modifier (§6): redirect, exp or one this implementation does not know (ignored)."""

    name: str
    value: str
    position: int = 0


@frozen
class SpfRecord:
    """One parsed ``v=spf1`` record.

    Attributes:
        text: the record as published (TXT strings joined).
        directives: the mechanisms in order.
        redirect, exp: the domain-specs of those modifiers, or None.
        modifiers: every modifier, known or not, in order.
        issues: syntax errors; a record with any is a ``permerror`` (§4.6).
    """

    text: str
    directives: tuple[Directive, ...] = ()
    redirect: str | None = None
    exp: str | None = None
    modifiers: tuple[Modifier, ...] = ()
    issues: tuple[SyntaxIssue, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.issues

    @property
    def all_directive(self) -> Directive | None:
        """The first ``all``, if any: evaluation never goes past it (§5.1)."""
        return next((d for d in self.directives if d.mechanism is Mechanism.ALL), None)

    @property
    def lookups(self) -> int:
        """DNS-querying terms written in this record itself (a ``redirect`` that ``all`` makes void excluded)."""
        own = sum(1 for d in self.directives if d.mechanism.queries_dns)
        return own + (1 if self.redirect is not None and self.all_directive is None else 0)


# --- parsing -------------------------------------------------------------------------------------------------

_VERSION = re.compile(r"v=spf1(?: |$)", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")
_MACRO_LETTERS = frozenset("slodiphcrtv")
_EXP_ONLY_LETTERS = frozenset("crt")
_DELIMITERS = frozenset(".-+,/_=")
# toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )  (§7.1)
_TOPLABEL = re.compile(r"(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]+\Z|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]\Z")
_CIDR = re.compile(r"(?:/(\d{1,3}))?(?://(\d{1,3}))?\Z")
_QUALIFIERS = {q.value: q for q in Qualifier}


def select_record(texts: tuple[str, ...]) -> tuple[str, ...]:
    """The TXT records that are SPF records: those starting with ``v=spf1`` then a space or the end (§4.5)."""
    return tuple(t for t in texts if _VERSION.match(t))


def _check_macro_string(text: str, offset: int, *, exp: bool) -> list[SyntaxIssue]:
    """Syntax of a macro-string (§7.1); ``offset`` places ``text`` in the record for the issue positions."""
    issues: list[SyntaxIssue] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            nxt = text[i + 1 : i + 2]
            if nxt in ("%", "_", "-"):
                i += 2
                continue
            if nxt != "{":
                issues.append(SyntaxIssue(offset + i, "a '%' must start a macro (%{...}) or be written %%, %_ or %-"))
                return issues
            end = text.find("}", i)
            if end < 0:
                issues.append(SyntaxIssue(offset + i, "macro not closed with '}'"))
                return issues
            problem = _macro_problem(text[i + 2 : end], exp=exp)
            if problem:
                issues.append(SyntaxIssue(offset + i, problem))
            i = end + 1
            continue
        if not ("\x21" <= char <= "\x7e"):
            issues.append(SyntaxIssue(offset + i, f"character '{shown(char)}' is not allowed here"))
            return issues
        i += 1
    return issues


def _macro_problem(body: str, *, exp: bool) -> str:
    if not body or body[0].lower() not in _MACRO_LETTERS:
        return f"unknown macro letter in %{{{shown(body)}}}"
    if body[0].lower() in _EXP_ONLY_LETTERS and not exp:
        return f"macro %{{{shown(body)}}} is allowed only in explanation text (RFC 7208 §7.2)"
    rest = body[1:]
    digits = re.match(r"\d*", rest)
    count = digits.group(0) if digits else ""
    if count and int(count) == 0:
        return f"macro %{{{shown(body)}}}: the number of parts must not be zero (RFC 7208 §7.3)"
    rest = rest[len(count) :]
    if rest[:1].lower() == "r":
        rest = rest[1:]
    if any(c not in _DELIMITERS for c in rest):
        return f"macro %{{{shown(body)}}} has an invalid transformer or delimiter"
    return ""


def _check_domain_spec(spec: str, offset: int) -> list[SyntaxIssue]:
    """domain-spec = macro-string domain-end (§7.1): it must end in a top label or a macro."""
    if not spec:
        return [SyntaxIssue(offset, "empty domain-spec")]
    issues = _check_macro_string(spec, offset, exp=False)
    if issues:
        return issues
    body = spec[:-1] if spec.endswith(".") else spec
    if body.endswith("}") or body.endswith(("%%", "%_", "%-")):
        return []
    last = body.rsplit(".", 1)
    if len(last) < 2 or not _TOPLABEL.match(last[1]):
        return [SyntaxIssue(offset, f"'{shown(spec)}' does not end in a valid top-level label")]
    return []


def _parse_cidr(
    text: str, offset: int, *, dual: bool, v6: bool = False
) -> tuple[str, int | None, int | None, list[SyntaxIssue]]:
    """Split a trailing ``/n`` or ``//n`` (or both) from ``text``; returns (rest, cidr4, cidr6, issues)."""
    match = _CIDR.search(text)
    if not match or not match.group(0):
        return text, None, None, []
    rest = text[: match.start()]
    four, six = match.group(1), match.group(2)
    issues: list[SyntaxIssue] = []
    if not dual and six is not None:
        issues.append(SyntaxIssue(offset + match.start(), "'//' is only allowed after a or mx"))
    cidr4 = int(four) if four is not None else None
    cidr6 = int(six) if six is not None else None
    for value, text_value, bound in ((cidr4, four, 128 if v6 else 32), (cidr6, six, 128)):
        if value is None or text_value is None:
            continue
        if value > bound or (len(text_value) > 1 and text_value[0] == "0"):
            issues.append(SyntaxIssue(offset + match.start(), f"invalid prefix length /{text_value}"))
    return rest, cidr4, cidr6, issues


def _parse_directive(term: str, start: int) -> tuple[Directive | None, list[SyntaxIssue]]:
    qualifier = Qualifier.PASS
    body, offset = term, start
    if term[:1] in _QUALIFIERS:
        qualifier, body, offset = _QUALIFIERS[term[0]], term[1:], start + 1
    name_match = re.match(r"[A-Za-z0-9]+", body)
    name = name_match.group(0).lower() if name_match else ""
    try:
        mechanism = Mechanism(name)
    except ValueError:
        return None, [SyntaxIssue(offset, f"unknown mechanism '{shown(body.split(':')[0])}'")]
    rest = body[len(name) :]
    value_offset = offset + len(name) + 1
    if mechanism is Mechanism.ALL:
        if rest:
            return None, [SyntaxIssue(offset, "'all' takes no argument")]
        return Directive(qualifier, mechanism, text=term, position=start), []
    if mechanism in (Mechanism.INCLUDE, Mechanism.EXISTS):
        if not rest.startswith(":"):
            return None, [SyntaxIssue(offset, f"'{name}' needs ':' and a domain")]
        issues = _check_domain_spec(rest[1:], value_offset)
        return Directive(qualifier, mechanism, rest[1:], text=term, position=start), issues
    if mechanism in (Mechanism.IP4, Mechanism.IP6):
        if not rest.startswith(":"):
            return None, [SyntaxIssue(offset, f"'{name}' needs ':' and an address")]
        address, cidr, _, issues = _parse_cidr(rest[1:], value_offset, dual=False, v6=mechanism is Mechanism.IP6)
        if issues:
            return None, issues
        try:
            if mechanism is Mechanism.IP4:
                ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(address)
            else:
                ip = ipaddress.IPv6Address(address)
        except ValueError:
            return None, [SyntaxIssue(value_offset, f"'{shown(address)}' is not an {name} address")]
        network = ipaddress.ip_network(f"{ip}/{cidr if cidr is not None else ip.max_prefixlen}", strict=False)
        return Directive(qualifier, mechanism, network=str(network), text=term, position=start), issues
    # a, mx, ptr: an optional ":domain-spec", then (a, mx) an optional dual-cidr-length.
    spec: str | None = None
    cidr4 = cidr6 = None
    issues = []
    if mechanism is not Mechanism.PTR:
        rest, cidr4, cidr6, issues = _parse_cidr(rest, value_offset, dual=True)
    if rest.startswith(":"):
        spec = rest[1:]
        issues += _check_domain_spec(spec, value_offset)
    elif rest:
        return None, [SyntaxIssue(offset + len(name), f"unexpected '{shown(rest)}' after '{name}'")]
    return Directive(qualifier, mechanism, spec, None, cidr4, cidr6, term, start), issues


def parse_record(text: str) -> SpfRecord:
    """Parse one SPF record (it starts with ``v=spf1``; see :func:`select_record`). Never raises."""
    if len(text) > MAX_TEXT:
        return SpfRecord(text[:MAX_TEXT], issues=(SyntaxIssue(MAX_TEXT, f"record longer than {MAX_TEXT} characters"),))
    if not _VERSION.match(text):
        return SpfRecord(text, issues=(SyntaxIssue(0, "the record does not start with 'v=spf1'"),))
    directives: list[Directive] = []
    modifiers: list[Modifier] = []
    issues: list[SyntaxIssue] = []
    redirect = exp = None
    position = 6
    # Terms are separated by one or more SP (0x20) characters (§4.6.1, §12); anything else between them is
    # part of a term and found out by the term's own syntax.
    for term in text[6:].split(" "):
        if not term:
            position += 1
            continue
        start = position
        position += len(term) + 1
        modifier = _NAME.match(term)
        if modifier and term[modifier.end() : modifier.end() + 1] == "=":
            name, value = modifier.group(0).lower(), term[modifier.end() + 1 :]
            modifiers.append(Modifier(name, value, start))
            value_offset = start + modifier.end() + 1
            if name in ("redirect", "exp"):
                if (redirect if name == "redirect" else exp) is not None:
                    # §6: "these two modifiers MUST NOT appear in a record more than once each"
                    issues.append(SyntaxIssue(start, f"'{name}' appears more than once (RFC 7208 §6)"))
                issues += _check_domain_spec(value, value_offset)
                if name == "redirect":
                    redirect = value
                else:
                    exp = value
            else:
                issues += _check_macro_string(value, value_offset, exp=False)
            continue
        directive, found = _parse_directive(term, start)
        issues += found
        if directive is not None:
            directives.append(directive)
    return SpfRecord(text, tuple(directives), redirect, exp, tuple(modifiers), tuple(issues))


# --- macros ---------------------------------------------------------------------------------------------------


class MacroError(ValueError):
    """A macro could not be expanded: its letter needs something the context does not have."""


@frozen
class MacroContext:
    """What macros expand to (§7.3): the client address, the sender, the current domain, the HELO name.

    ``ip`` and ``sender`` may be None for a static analysis; a macro needing them then cannot be expanded.
    """

    domain: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    sender: str | None = None
    helo: str | None = None


def _macro_value(letter: str, ctx: MacroContext) -> str:
    ip = ctx.ip
    if letter == "d":
        return ctx.domain
    if letter in ("s", "l", "o"):
        if ctx.sender is None:
            raise MacroError(f"%{{{letter}}} needs the sender")
        local, _, domain = ctx.sender.rpartition("@")
        # §4.3: a sender without local-part has "postmaster" substituted.
        return {"s": f"{local or 'postmaster'}@{domain}", "l": local or "postmaster", "o": domain}[letter]
    if letter == "h":
        if ctx.helo is None:
            raise MacroError("%{h} needs the HELO name")
        return ctx.helo
    if ip is None:
        raise MacroError(f"%{{{letter}}} needs the client address")
    if letter == "i":
        if ip.version == 4:
            return str(ip)
        return ".".join(ip.exploded.replace(":", ""))  # §7.3: 32 dot-separated nibbles
    if letter == "c":
        return str(ip)
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "p":
        return "unknown"  # §7.3: allowed when no validated name is determined; see the module docstring
    if letter == "r":
        return "unknown"  # §7.3: the receiving host's name; the checker is not a receiver
    if letter == "t":
        return "0"
    raise MacroError(f"unknown macro letter {letter!r}")


def expand(spec: str, ctx: MacroContext) -> str:
    """Expand the macros of ``spec`` (§7.3, §7.4). Raises :class:`MacroError` when a value is missing.

    A result longer than 253 characters loses labels from the left until it fits (§7.3).
    """
    out: list[str] = []
    i = 0
    while i < len(spec):
        char = spec[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        nxt = spec[i + 1 : i + 2]
        if nxt in ("%", "_", "-"):
            out.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            continue
        end = spec.find("}", i)
        if nxt != "{" or end < 0:
            raise MacroError(f"malformed macro at '{shown(spec[i:i + 10])}'")
        body = spec[i + 2 : end]
        i = end + 1
        letter = body[:1]
        value = _macro_value(letter.lower(), ctx)
        rest = body[1:]
        digits = re.match(r"\d*", rest)
        count_text = digits.group(0) if digits else ""
        rest = rest[len(count_text) :]
        reverse = rest[:1].lower() == "r"
        delimiters = rest[1:] if reverse else rest
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if count_text:
            count = int(count_text)
            if count == 0:
                raise MacroError("zero parts in a macro")
            parts = parts[-count:]
        value = ".".join(parts)
        if letter.isupper():
            value = urllib.parse.quote(value, safe="")  # §7.3: uppercase letters are URL-escaped
        out.append(value)
    result = "".join(out)
    while len(result.rstrip(".")) > 253 and "." in result:
        result = result.split(".", 1)[1]
    return result


def _valid_domain(name: str) -> bool:
    """§4.3: a domain is malformed with an empty label not at the end, a label over 63, or a single label."""
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return (
        len(labels) >= 2
        and all(0 < len(label) <= 63 for label in labels)
        and len(name.rstrip(".")) <= 253
        and name.isascii()
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # §5: an IPv4-mapped IPv6 client is an IPv4 client
    return ip


# --- record fetching (shared by analysis and evaluation) -------------------------------------------------------


class NodeStatus(enum.StrEnum):
    """What fetching one domain's record gave."""

    FOUND = "found"
    NO_RECORD = "no-record"
    NXDOMAIN = "nxdomain"
    MULTIPLE = "multiple"
    SYNTAX = "syntax"
    DNS_ERROR = "dns-error"
    INVALID_DOMAIN = "invalid-domain"
    LOOP = "loop"
    MACRO = "macro"
    NOT_FOLLOWED = "not-followed"


@frozen
class _Fetched:
    status: NodeStatus
    record: SpfRecord | None = None
    texts: tuple[str, ...] = ()
    detail: str = ""


def _fetch(domain: str) -> Generator[Question, Reply, _Fetched]:
    """The SPF record of ``domain`` (§4.4, §4.5): exactly one ``v=spf1`` TXT record, parsed."""
    if not _valid_domain(domain):
        return _Fetched(NodeStatus.INVALID_DOMAIN, detail=f"'{shown(domain)}' is not a valid domain name")
    reply = yield Question(domain.rstrip(".").lower(), "TXT")
    if reply.status is ReplyStatus.NXDOMAIN:
        return _Fetched(NodeStatus.NXDOMAIN)
    if not reply.status.answered:
        return _Fetched(NodeStatus.DNS_ERROR, detail=reply.detail or reply.status.value)
    texts = select_record(reply.records)
    if not texts:
        return _Fetched(NodeStatus.NO_RECORD)
    if len(texts) > 1:
        return _Fetched(NodeStatus.MULTIPLE, texts=texts)
    record = parse_record(texts[0])
    if not record.valid:
        return _Fetched(NodeStatus.SYNTAX, record, texts)
    return _Fetched(NodeStatus.FOUND, record, texts)


# --- static analysis ------------------------------------------------------------------------------------------


class SpfIssueKind(enum.StrEnum):
    """A problem the analysis found in the policy tree."""

    NO_RECORD = "no-record"  # the domain publishes no SPF record (result none)
    MULTIPLE_RECORDS = "multiple-records"  # §4.5: permerror
    SYNTAX = "syntax"  # §4.6: permerror
    DNS_ERROR = "dns-error"  # a lookup got no answer: temperror at receivers while it lasts
    TOO_MANY_LOOKUPS = "too-many-lookups"  # §4.6.4: more than 10 DNS-querying terms
    TOO_MANY_VOID_LOOKUPS = "too-many-void-lookups"  # §4.6.4: more than 2
    TOO_MANY_MX_NAMES = "too-many-mx-names"  # §4.6.4: an mx with more than 10 names
    VOID_LOOKUP = "void-lookup"  # a term whose lookup found nothing
    INCLUDE_NOT_FOUND = "include-not-found"  # §5.2: include of a domain without a record is permerror
    REDIRECT_NOT_FOUND = "redirect-not-found"  # §6.1: so is a redirect
    LOOP = "loop"  # an include or redirect of a domain already being evaluated
    PASS_ALL = "pass-all"  # noqa: S105 - +all: anyone may send
    NEUTRAL_ALL = "neutral-all"  # ?all: says nothing about strangers
    NO_ALL = "no-all"  # no all and no redirect: the default result is neutral (§4.7)
    REDIRECT_IGNORED = "redirect-ignored"  # §6.1: redirect is ignored when the record has an all
    PTR_USED = "ptr-used"  # §5.5: ptr SHOULD NOT be used
    NOT_WALKED = "not-walked"  # a target with macros needing an address or sender, or past the walk's bounds


@frozen
class SpfIssue:
    """One problem: its kind, the domain whose record has it, the term, and details for the message."""

    kind: SpfIssueKind
    domain: str
    term: str = ""
    detail: str = ""


@frozen
class SpfNode:
    """One record of the policy tree.

    Attributes:
        domain: whose record this is.
        via: how it was reached (``include:spf.protection.outlook.com``, ``redirect=_spf.example.com``), ""
            for the top.
        status: what fetching it gave.
        record: the parsed record, when there was exactly one.
        lookups: DNS-querying terms in this record itself.
        total_lookups: this record's and all its descendants' (what §4.6.4 limits to 10 at the top).
        void_terms: terms of this record whose lookups found nothing.
        children: the records it includes or redirects to, in order.
    """

    domain: str
    via: str
    status: NodeStatus
    record: SpfRecord | None = None
    lookups: int = 0
    total_lookups: int = 0
    void_terms: tuple[str, ...] = ()
    children: tuple[SpfNode, ...] = ()
    detail: str = ""


@frozen
class SpfAnalysis:
    """The whole policy of a domain, as a tree with its counts and problems.

    Attributes:
        domain: the domain analysed.
        root: its record's node.
        total_lookups: DNS-querying terms in the whole tree (the limit is 10).
        void_lookups: lookups in the whole tree that found nothing (the limit is 2).
        issues: the problems, in tree order.
        include_domains: every domain reached by include or redirect, lower case, in tree order.
    """

    domain: str
    root: SpfNode
    total_lookups: int
    void_lookups: int
    issues: tuple[SpfIssue, ...]
    include_domains: tuple[str, ...] = ()

    @property
    def published(self) -> bool:
        return self.root.status is not NodeStatus.NO_RECORD and self.root.status is not NodeStatus.NXDOMAIN

    def has(self, kind: SpfIssueKind) -> bool:
        return any(issue.kind is kind for issue in self.issues)

    def includes(self, domain: str) -> bool:
        """Is ``domain`` reached by an include or redirect anywhere in the tree?"""
        return domain.rstrip(".").lower() in self.include_domains


@dataclass
class _Walk:
    issues: list[SpfIssue] = field(default_factory=list)
    nodes: int = 0
    void: int = 0
    reached: list[str] = field(default_factory=list)


def analyze(domain: str) -> Process[SpfAnalysis]:
    """The process that fetches and analyses ``domain``'s whole SPF policy tree."""
    return Process(_analyze(domain))


def _analyze(domain: str) -> Generator[Question, Reply, SpfAnalysis]:
    walk = _Walk()
    root = yield from _walk_node(domain, "", (), walk)
    if root.total_lookups > DNS_LOOKUP_LIMIT:
        walk.issues.append(
            SpfIssue(SpfIssueKind.TOO_MANY_LOOKUPS, domain, detail=f"{root.total_lookups} > {DNS_LOOKUP_LIMIT}")
        )
    if walk.void > VOID_LOOKUP_LIMIT:
        walk.issues.append(
            SpfIssue(SpfIssueKind.TOO_MANY_VOID_LOOKUPS, domain, detail=f"{walk.void} > {VOID_LOOKUP_LIMIT}")
        )
    if root.record is not None and root.status is NodeStatus.FOUND:
        walk.issues.extend(_top_issues(domain, root))
    return SpfAnalysis(domain, root, root.total_lookups, walk.void, tuple(walk.issues), tuple(walk.reached))


def _effective_all(node: SpfNode) -> Directive | None:
    """The ``all`` that ends evaluation of this record, following redirects (§6.1)."""
    if node.record is None:
        return None
    found = node.record.all_directive
    if found is not None:
        return found
    redirected = [c for c in node.children if c.via.startswith("redirect=")]
    return _effective_all(redirected[0]) if redirected else None


def _top_issues(domain: str, root: SpfNode) -> list[SpfIssue]:
    final = _effective_all(root)
    assert root.record is not None
    if final is None:
        if root.record.redirect is None:
            return [SpfIssue(SpfIssueKind.NO_ALL, domain)]
        return []
    if final.qualifier is Qualifier.PASS:
        return [SpfIssue(SpfIssueKind.PASS_ALL, domain, final.text)]
    if final.qualifier is Qualifier.NEUTRAL:
        return [SpfIssue(SpfIssueKind.NEUTRAL_ALL, domain, final.text)]
    return []


def _walk_node(
    domain: str, via: str, ancestors: tuple[str, ...], walk: _Walk
) -> Generator[Question, Reply, SpfNode]:
    key = domain.rstrip(".").lower()
    if key in ancestors:
        walk.issues.append(SpfIssue(SpfIssueKind.LOOP, ancestors[-1], via, f"{key} is already being evaluated"))
        return SpfNode(domain, via, NodeStatus.LOOP)
    if walk.nodes >= _MAX_NODES or len(ancestors) >= _MAX_DEPTH:
        walk.issues.append(SpfIssue(SpfIssueKind.NOT_WALKED, ancestors[-1], via, "the tree is too large to walk"))
        return SpfNode(domain, via, NodeStatus.NOT_FOLLOWED)
    walk.nodes += 1
    fetched = yield from _fetch(domain)
    parent = ancestors[-1] if ancestors else domain
    if fetched.status is not NodeStatus.FOUND:
        walk.issues.append(_fetch_issue(fetched, domain, parent, via))
        return SpfNode(domain, via, fetched.status, fetched.record, detail=fetched.detail)
    record = fetched.record
    assert record is not None
    chain = (*ancestors, key)
    children: list[SpfNode] = []
    void_terms: list[str] = []
    for directive in record.directives:
        if directive.mechanism is Mechanism.PTR:
            walk.issues.append(SpfIssue(SpfIssueKind.PTR_USED, domain, directive.text))
        if directive.mechanism is Mechanism.INCLUDE:
            target = _static_target(directive.domain_spec, domain)
            if target is None:
                walk.issues.append(SpfIssue(SpfIssueKind.NOT_WALKED, domain, directive.text, "macros need an address"))
                children.append(SpfNode(directive.domain_spec or "", directive.text, NodeStatus.MACRO))
                continue
            walk.reached.append(target.rstrip(".").lower())
            children.append((yield from _walk_node(target, directive.text, chain, walk)))
        elif directive.mechanism in (Mechanism.A, Mechanism.MX, Mechanism.EXISTS):
            void = yield from _probe_term(directive, domain, walk)
            if void:
                void_terms.append(directive.text)
    if record.redirect is not None:
        if record.all_directive is not None:
            walk.issues.append(SpfIssue(SpfIssueKind.REDIRECT_IGNORED, domain, f"redirect={record.redirect}"))
        else:
            target = _static_target(record.redirect, domain)
            via_text = f"redirect={record.redirect}"
            if target is None:
                walk.issues.append(SpfIssue(SpfIssueKind.NOT_WALKED, domain, via_text, "macros need an address"))
                children.append(SpfNode(record.redirect, via_text, NodeStatus.MACRO))
            else:
                walk.reached.append(target.rstrip(".").lower())
                children.append((yield from _walk_node(target, via_text, chain, walk)))
    total = record.lookups + sum(child.total_lookups for child in children)
    return SpfNode(domain, via, NodeStatus.FOUND, record, record.lookups, total, tuple(void_terms), tuple(children))


def _fetch_issue(fetched: _Fetched, domain: str, parent: str, via: str) -> SpfIssue:
    top = not via
    if fetched.status in (NodeStatus.NO_RECORD, NodeStatus.NXDOMAIN, NodeStatus.INVALID_DOMAIN):
        if top:
            return SpfIssue(SpfIssueKind.NO_RECORD, domain, detail=fetched.status.value)
        kind = SpfIssueKind.REDIRECT_NOT_FOUND if via.startswith("redirect=") else SpfIssueKind.INCLUDE_NOT_FOUND
        return SpfIssue(kind, parent, via, fetched.status.value)
    if fetched.status is NodeStatus.MULTIPLE:
        return SpfIssue(SpfIssueKind.MULTIPLE_RECORDS, domain, via, f"{len(fetched.texts)} records")
    if fetched.status is NodeStatus.SYNTAX:
        assert fetched.record is not None
        first = fetched.record.issues[0]
        return SpfIssue(SpfIssueKind.SYNTAX, domain, via, f"at {first.position}: {first.message}")
    return SpfIssue(SpfIssueKind.DNS_ERROR, domain, via, fetched.detail)


def _static_target(spec: str | None, domain: str) -> str | None:
    """A domain-spec expanded with only the current domain known; None when it needs more (address, sender)."""
    if spec is None:
        return domain
    try:
        return expand(spec, MacroContext(domain))
    except MacroError:
        return None


def _probe_term(directive: Directive, domain: str, walk: _Walk) -> Generator[Question, Reply, bool]:
    """Look up what an a/mx/exists term names, for void lookups and MX name counts; True when void."""
    target = _static_target(directive.domain_spec, domain)
    if target is None or not _valid_domain(target):
        return False
    name = target.rstrip(".").lower()
    if directive.mechanism is Mechanism.MX:
        reply = yield Question(name, "MX")
        names = [r for r in reply.records if r != "."]
        if len(names) > MX_NAME_LIMIT:
            walk.issues.append(
                SpfIssue(SpfIssueKind.TOO_MANY_MX_NAMES, domain, directive.text, f"{len(names)} > {MX_NAME_LIMIT}")
            )
        void = reply.status.void
    elif directive.mechanism is Mechanism.EXISTS:
        reply = yield Question(name, "A")
        void = reply.status.void
    else:
        a = yield Question(name, "A")
        aaaa = yield Question(name, "AAAA")
        void = a.status.void and aaaa.status.void
    if void:
        walk.void += 1
        walk.issues.append(SpfIssue(SpfIssueKind.VOID_LOOKUP, domain, directive.text, f"{name} has no records"))
    return void


# --- evaluation -----------------------------------------------------------------------------------------------


class SpfReason(enum.StrEnum):
    """Why ``check_host()`` gave its result."""

    MATCHED = "matched"  # a mechanism matched; its qualifier gave the result
    DEFAULT = "default"  # nothing matched and there is no redirect: neutral (§4.7)
    NO_RECORD = "no-record"  # no SPF record (or NXDOMAIN, or a malformed domain): none (§4.3, §4.5)
    MULTIPLE_RECORDS = "multiple-records"
    SYNTAX = "syntax"
    TOO_MANY_LOOKUPS = "too-many-lookups"
    TOO_MANY_VOID_LOOKUPS = "too-many-void-lookups"
    TOO_MANY_MX_NAMES = "too-many-mx-names"
    INCLUDE_NOT_FOUND = "include-not-found"  # include of a domain without a record (§5.2)
    REDIRECT_NOT_FOUND = "redirect-not-found"  # redirect to a domain without a record (§6.1)
    MACRO = "macro"  # a macro could not be expanded
    DNS_ERROR = "dns-error"  # no answer from DNS: temperror


@frozen
class SpfMatch:
    """The directive that decided: its text, the domain whose record holds it, and the include path to it."""

    directive: str
    domain: str
    path: tuple[str, ...] = ()


@frozen
class SpfVerdict:
    """The result of ``check_host(ip, domain, sender)``.

    Attributes:
        ip, domain, sender: the inputs.
        result: one of the seven results.
        reason: why.
        matched: the deciding directive, for a match (an include's match is the directive inside it that
            matched, with the include path).
        detail: the domain and term of an error, for the message.
        lookups, void_lookups: what this evaluation used of the limits.
    """

    ip: str
    domain: str
    sender: str
    result: SpfResult
    reason: SpfReason
    matched: SpfMatch | None = None
    detail: str = ""
    lookups: int = 0
    void_lookups: int = 0


@dataclass
class _Budget:
    lookups: int = 0
    void: int = 0


class _Stop(Exception):
    """Ends an evaluation early with a result (a limit exceeded, a DNS failure); caught inside the process."""

    def __init__(self, result: SpfResult, reason: SpfReason, detail: str) -> None:
        super().__init__(detail)
        self.result, self.reason, self.detail = result, reason, detail


def check_host(ip: str, domain: str, sender: str | None = None, *, helo: str | None = None) -> Process[SpfVerdict]:
    """The process evaluating ``check_host(ip, domain, sender)`` (RFC 7208 §4).

    ``sender`` defaults to ``postmaster@domain`` (§4.3, §2.4); ``ip`` must be an IP address (ValueError
    otherwise: the caller's input, not DNS data).
    """
    client = _ip(ip)
    mail_from = sender if sender else f"postmaster@{domain}"
    return Process(_check_host_top(client, domain, mail_from, helo))


def _check_host_top(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str, sender: str, helo: str | None
) -> Generator[Question, Reply, SpfVerdict]:
    budget = _Budget()
    try:
        result, reason, matched, detail = yield from _evaluate(ip, domain, sender, helo, budget, ())
    except _Stop as stop:
        result, reason, matched, detail = stop.result, stop.reason, None, stop.detail
    return SpfVerdict(str(ip), domain, sender, result, reason, matched, detail, budget.lookups, budget.void)


_Outcome = tuple[SpfResult, SpfReason, SpfMatch | None, str]


def _count(budget: _Budget, domain: str, term: str) -> None:
    budget.lookups += 1
    if budget.lookups > DNS_LOOKUP_LIMIT:
        raise _Stop(SpfResult.PERMERROR, SpfReason.TOO_MANY_LOOKUPS, f"{domain}: {term} is DNS lookup {budget.lookups}")


def _void(budget: _Budget, reply: Reply, domain: str, term: str) -> None:
    if not reply.status.answered:
        raise _Stop(SpfResult.TEMPERROR, SpfReason.DNS_ERROR, f"{domain}: {term}: {reply.detail or reply.status}")
    if reply.status.void:
        budget.void += 1
        if budget.void > VOID_LOOKUP_LIMIT:
            detail = f"{domain}: {term} is void lookup {budget.void}"
            raise _Stop(SpfResult.PERMERROR, SpfReason.TOO_MANY_VOID_LOOKUPS, detail)


def _evaluate(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    domain: str,
    sender: str,
    helo: str | None,
    budget: _Budget,
    path: tuple[str, ...],
) -> Generator[Question, Reply, _Outcome]:
    fetched = yield from _fetch(domain)
    if fetched.status in (NodeStatus.NO_RECORD, NodeStatus.NXDOMAIN, NodeStatus.INVALID_DOMAIN):
        return SpfResult.NONE, SpfReason.NO_RECORD, None, f"{domain}: {fetched.status}"
    if fetched.status is NodeStatus.DNS_ERROR:
        return SpfResult.TEMPERROR, SpfReason.DNS_ERROR, None, f"{domain}: {fetched.detail}"
    if fetched.status is NodeStatus.MULTIPLE:
        return SpfResult.PERMERROR, SpfReason.MULTIPLE_RECORDS, None, f"{domain}: {len(fetched.texts)} records"
    if fetched.status is NodeStatus.SYNTAX:
        assert fetched.record is not None
        first = fetched.record.issues[0]
        return SpfResult.PERMERROR, SpfReason.SYNTAX, None, f"{domain} at {first.position}: {first.message}"
    record = fetched.record
    assert record is not None
    ctx = MacroContext(domain, ip, sender, helo)
    for directive in record.directives:
        if directive.mechanism.queries_dns:
            _count(budget, domain, directive.text)
        if directive.mechanism is Mechanism.INCLUDE:
            target = _target(directive.domain_spec, ctx, domain, directive.text)
            inner = yield from _evaluate(ip, target, sender, helo, budget, (*path, directive.text))
            result, reason, matched, detail = inner
            # §5.2: how an include's result counts for the including record.
            if result is SpfResult.PASS:
                return directive.qualifier.result, SpfReason.MATCHED, matched, detail
            if result in (SpfResult.TEMPERROR, SpfResult.PERMERROR):
                return result, reason, None, detail
            if result is SpfResult.NONE:
                return SpfResult.PERMERROR, SpfReason.INCLUDE_NOT_FOUND, None, f"{domain}: {directive.text}: {detail}"
            continue
        matches = yield from _matches(directive, ip, ctx, budget)
        if matches:
            return directive.qualifier.result, SpfReason.MATCHED, SpfMatch(directive.text, domain, path), ""
    if record.redirect is not None and record.all_directive is None:
        term = f"redirect={record.redirect}"
        _count(budget, domain, term)
        target = _target(record.redirect, ctx, domain, term)
        result, reason, matched, detail = yield from _evaluate(ip, target, sender, helo, budget, (*path, term))
        if result is SpfResult.NONE:
            return SpfResult.PERMERROR, SpfReason.REDIRECT_NOT_FOUND, None, f"{domain}: {term}: {detail}"
        return result, reason, matched, detail
    return SpfResult.NEUTRAL, SpfReason.DEFAULT, None, ""


def _target(spec: str | None, ctx: MacroContext, domain: str, term: str) -> str:
    if spec is None:
        return domain
    try:
        return expand(spec, ctx)
    except MacroError as exc:
        raise _Stop(SpfResult.PERMERROR, SpfReason.MACRO, f"{domain}: {term}: {exc}") from None


def _in(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addresses: tuple[str, ...], cidr4: int | None, cidr6: int | None
) -> bool:
    prefix = (cidr4 if cidr4 is not None else 32) if ip.version == 4 else (cidr6 if cidr6 is not None else 128)
    for text in addresses:
        try:
            network = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
        except ValueError:
            continue
        if network.version == ip.version and ip in network:
            return True
    return False


def _matches(
    directive: Directive, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ctx: MacroContext, budget: _Budget
) -> Generator[Question, Reply, bool]:
    domain = ctx.domain
    mechanism = directive.mechanism
    if mechanism is Mechanism.ALL:
        return True
    if mechanism in (Mechanism.IP4, Mechanism.IP6):
        assert directive.network is not None
        network = ipaddress.ip_network(directive.network)
        return network.version == ip.version and ip in network
    target = _target(directive.domain_spec, ctx, domain, directive.text)
    if not _valid_domain(target):
        return False
    name = target.rstrip(".").lower()
    address_type = "A" if ip.version == 4 else "AAAA"
    if mechanism is Mechanism.A:
        reply = yield Question(name, address_type)
        _void(budget, reply, domain, directive.text)
        return _in(ip, reply.records, directive.cidr4, directive.cidr6)
    if mechanism is Mechanism.EXISTS:
        reply = yield Question(name, "A")  # §5.7: always an A query, whatever the client's family
        _void(budget, reply, domain, directive.text)
        return bool(reply.records)
    if mechanism is Mechanism.MX:
        reply = yield Question(name, "MX")
        _void(budget, reply, domain, directive.text)
        names = [r for r in reply.records if r != "."]
        if len(names) > MX_NAME_LIMIT:
            raise _Stop(
                SpfResult.PERMERROR, SpfReason.TOO_MANY_MX_NAMES, f"{domain}: {directive.text}: {len(names)} MX names"
            )
        for mx in names:
            addresses = yield Question(mx.lower(), address_type)
            if not addresses.status.answered:
                detail = f"{domain}: {directive.text}: {mx}: {addresses.detail}"
                raise _Stop(SpfResult.TEMPERROR, SpfReason.DNS_ERROR, detail)
            if _in(ip, addresses.records, directive.cidr4, directive.cidr6):
                return True
        return False
    # ptr (§5.5): the client's validated names, then does one of them end in the target?
    reply = yield Question(_reverse_name(ip), "PTR")
    if not reply.status.answered:
        return False  # §5.5: "If a DNS error occurs while doing the PTR RR lookup, then this mechanism fails to match."
    _void(budget, reply, domain, directive.text)
    for ptr_name in reply.records[:PTR_NAME_LIMIT]:
        addresses = yield Question(ptr_name.lower(), address_type)
        if not addresses.status.answered:
            continue  # §5.5: "that domain name is skipped and the search continues"
        validated = _in(ip, addresses.records, None, None)
        candidate = ptr_name.rstrip(".").lower()
        if validated and (candidate == name or candidate.endswith("." + name)):
            return True
    return False


def _reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return ip.reverse_pointer
