"""Plain-data DNS for the I/O-free policy processes: a table of answers, and a loop that feeds them.

The processes in ``diag.policy`` never touch the network; their drivers answer them with the run's resolver
(tested against real servers elsewhere). Here a :class:`Zone` plays that part with data, which is the point of
the design: every branch of the judgement can be reached without a server.
"""

from __future__ import annotations

from typing import TypeVar

import pytest

from diag.policy.lookup import Process, Question, Reply, ReplyStatus

T = TypeVar("T")


class Zone:
    """Answers by name and type; a name with no data of any type is NXDOMAIN, one with other types NODATA."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[str, ...]] = {}
        self.failures: dict[tuple[str, str], ReplyStatus] = {}
        self.asked: list[Question] = []

    def add(self, name: str, rdtype: str, *records: str) -> Zone:
        key = (name.lower().rstrip("."), rdtype.upper())
        self.data[key] = self.data.get(key, ()) + records
        return self

    def fail(self, name: str, rdtype: str, status: ReplyStatus = ReplyStatus.ERROR) -> Zone:
        self.failures[(name.lower().rstrip("."), rdtype.upper())] = status
        return self

    def reply(self, question: Question) -> Reply:
        key = (question.name.lower().rstrip("."), question.rdtype.upper())
        if key in self.failures:
            return Reply(self.failures[key], detail="SERVFAIL")
        if key in self.data:
            return Reply(ReplyStatus.OK, self.data[key])
        if any(name == key[0] for name, _ in self.data):
            return Reply(ReplyStatus.NODATA)
        return Reply(ReplyStatus.NXDOMAIN)

    def run(self, process: Process[T]) -> T:
        while (question := process.question) is not None:
            self.asked.append(question)
            process.answer(self.reply(question))
        return process.result


@pytest.fixture
def zone() -> Zone:
    return Zone()
