"""DNS questions and answers as plain data, and the I/O-free processes that ask them.

A policy evaluation that needs lookups along the way (SPF's ``include`` and ``redirect``, DMARC's fallback to
the organizational domain, DNSSEC's chain of trust) is written as a generator that yields a :class:`Question`
and is sent the :class:`Reply`. :class:`Process` wraps it in the shape of dnspython's ``_Resolution`` (the
resolution logic is an I/O-free object shared by its sync and async resolvers): ``question`` says what it needs
next, ``answer()`` gives it, ``result`` is there when ``question`` is None. :func:`drive` answers with the
run's resolver; tests answer from a table.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import Generic, TypeVar

import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rrset

from diag.errors import DnsError, DnsNoDnssecError, DnsTimeoutError
from diag.frozen import frozen
from diag.net.dns import Answer, DnsStatus, Resolver, name_text

__all__ = [
    "MAX_TEXT",
    "Process",
    "Question",
    "Reply",
    "ReplyStatus",
    "Signed",
    "drive",
    "reply_from_answer",
    "shown",
    "txt_text",
]

T = TypeVar("T")

MAX_TEXT = 8192
"""Longest TXT record (all its strings joined) a parser reads; a DNS message can carry 64 KiB, no policy needs
more than a few hundred bytes, and a longer one is reported as too long instead of parsed."""

# Most questions one process may ask: every process has its own limits (SPF's ten lookups), this is the
# backstop that keeps a hostile zone from keeping one busy forever.
_MAX_QUESTIONS = 200


class ReplyStatus(enum.StrEnum):
    """What a DNS question got: an answer (data, NXDOMAIN, NODATA) or none (an error or a timeout)."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    ERROR = "error"
    TIMEOUT = "timeout"

    @property
    def answered(self) -> bool:
        """True for an answer, data or not; False when the resolver failed (RFC 7208 §5: temperror)."""
        return self in (ReplyStatus.OK, ReplyStatus.NXDOMAIN, ReplyStatus.NODATA)

    @property
    def void(self) -> bool:
        """NXDOMAIN or NODATA: a "void lookup" in RFC 7208 §4.6.4's words."""
        return self in (ReplyStatus.NXDOMAIN, ReplyStatus.NODATA)


@frozen
class Question:
    """A DNS question: a name (an A-label name without trailing dot) and a record type (``TXT``).

    ``dnssec`` asks for the DNSSEC material too (the DO bit): the reply then has :attr:`Reply.signed`.
    """

    name: str
    rdtype: str
    dnssec: bool = False

    def __str__(self) -> str:
        return f"{self.name} {self.rdtype}{' +dnssec' if self.dnssec else ''}"


@frozen
class Signed:
    """The DNSSEC material of an answer, as dnspython data (what ``dns.dnssec.validate`` takes).

    Attributes:
        rrset: the answer's records as an rrset at the name they were found at, None for a negative answer.
        signatures: the RRSIGs covering it.
        authority: the authority section (SOA, NSEC/NSEC3 and their RRSIGs for a negative answer).
        authenticated: the resolver set the AD bit.
    """

    rrset: dns.rrset.RRset | None = None
    signatures: tuple[dns.rdata.Rdata, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    authenticated: bool = False


@frozen
class Reply:
    """The answer to a :class:`Question`, as text.

    Attributes:
        status: data, NXDOMAIN, NODATA, or no answer (error, timeout).
        records: the data as text: a TXT record's strings joined (RFC 7208 §3.3), addresses for A and AAAA,
            target names without trailing dot for MX, PTR and CNAME, presentation format otherwise.
        detail: the resolver's words when there was no answer.
        canonical_name: where the data was found after CNAMEs ("" when the same as the question's name).
        signed: the DNSSEC material, for a question asked with ``dnssec``.
        no_dnssec: an ERROR reply to a ``dnssec`` question because the resolver gave no DNSSEC material (it does
            not implement EDNS): the path to the resolver, not the zone, is at fault.
    """

    status: ReplyStatus
    records: tuple[str, ...] = ()
    detail: str = ""
    canonical_name: str = ""
    signed: Signed | None = None
    no_dnssec: bool = False


class Process(Generic[T]):
    """An I/O-free computation that asks DNS questions one at a time (the ``dns.resolver._Resolution`` pattern).

    Built from a generator that yields questions and is sent replies; its return value is the result. The
    generator must not raise: failures are part of the result (the policy modules make them typed facts).
    """

    def __init__(self, steps: Generator[Question, Reply, T]) -> None:
        self._steps = steps
        self._asked = 0
        self._question: Question | None = None
        self._result: T | None = None
        self._done = False
        self._advance(None)

    @property
    def question(self) -> Question | None:
        """The question to answer next, or None when the result is ready."""
        return self._question

    @property
    def asked(self) -> int:
        """Questions asked so far."""
        return self._asked

    @property
    def result(self) -> T:
        """The outcome; only once :attr:`question` is None."""
        if not self._done:
            raise RuntimeError(f"the process still waits for an answer to {self._question}")
        return self._result  # type: ignore[return-value]

    def answer(self, reply: Reply) -> None:
        """Give the reply to :attr:`question`."""
        if self._done:
            raise RuntimeError("the process asked nothing")
        self._advance(reply)

    def _advance(self, reply: Reply | None) -> None:
        while True:
            try:
                question = self._steps.send(reply)  # type: ignore[arg-type]  # the first send must be None
            except StopIteration as stop:
                self._question, self._result, self._done = None, stop.value, True
                return
            if self._asked < _MAX_QUESTIONS:
                self._asked += 1
                self._question = question
                return
            # Over budget: the process hears "no answer" (a temperror for SPF) until it ends on its own, so it
            # still produces its typed result.
            reply = Reply(ReplyStatus.ERROR, detail=f"gave up after {_MAX_QUESTIONS} DNS questions")


def txt_text(rdata: dns.rdata.Rdata) -> str:
    """A TXT record's character-strings joined without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2).

    Bytes that are not UTF-8 become lone surrogates (``surrogateescape``), so parsers see them as the non-ASCII
    characters they are and report them, and nothing is lost for display (which escapes them).
    """
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    return b"".join(rdata.strings).decode("utf-8", "surrogateescape")


def _rdata_text(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return txt_text(rdata)
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return name_text(rdata.exchange)
    if isinstance(rdata, (dns.rdtypes.ANY.PTR.PTR, dns.rdtypes.ANY.CNAME.CNAME)):
        return name_text(rdata.target)
    return rdata.to_text()


def reply_from_answer(answer: Answer) -> Reply:
    """The :class:`Reply` for a resolver :class:`~diag.net.dns.Answer` (records of the asked type only)."""
    canonical = answer.canonical_name if answer.via_cname else ""
    wanted = dns.rdatatype.from_text(answer.rdtype)
    rdatas = [r for r in answer.records if r.rdtype == wanted]
    signed = None
    if answer.dnssec:
        owner = dns.name.from_text(answer.canonical_name)
        rrset = dns.rrset.from_rdata_list(owner, 0, rdatas) if rdatas else None
        signed = Signed(rrset, answer.signatures, answer.authority, answer.authenticated)
    if answer.status is DnsStatus.NXDOMAIN:
        return Reply(ReplyStatus.NXDOMAIN, canonical_name=canonical, signed=signed)
    records = tuple(_rdata_text(r) for r in rdatas)
    if not records:
        return Reply(ReplyStatus.NODATA, canonical_name=canonical, signed=signed)
    return Reply(ReplyStatus.OK, records, canonical_name=canonical, signed=signed)


async def ask(resolver: Resolver, question: Question) -> Reply:
    """Ask the run's resolver (cached per name and type); a failure becomes an ERROR or TIMEOUT reply."""
    try:
        answer = await resolver.query(question.name, question.rdtype, dnssec=question.dnssec)
    except DnsTimeoutError as exc:
        return Reply(ReplyStatus.TIMEOUT, detail=str(exc))
    except DnsNoDnssecError as exc:
        return Reply(ReplyStatus.ERROR, detail=str(exc), no_dnssec=True)
    except DnsError as exc:
        return Reply(ReplyStatus.ERROR, detail=str(exc))
    return reply_from_answer(answer)


async def drive(process: Process[T], resolver: Resolver) -> T:
    """Answer ``process``'s questions with ``resolver`` until it has its result."""
    while (question := process.question) is not None:
        process.answer(await ask(resolver, question))
    return process.result


def shown(text: str, limit: int = 200) -> str:
    """``text`` safe for a message: non-printable and non-ASCII characters escaped, cut at ``limit``."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"
