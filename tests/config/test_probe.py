"""The ``[[Probe]]`` tables and ``ProbeKey`` of the configuration (``diag/config/schema.py``): the model they make
and one line per problem, in the loader's style."""

from __future__ import annotations

import pytest

from diag.config import DEFAULT_MIN_INTERVAL, MAX_PROBES, ConfigFileError, ProbeConfig, dump_toml, parse_config
from diag.config.load import Problem

BASE = '[[AcceptedDomain]]\nDomainName = "contoso.com"\n'  # lines 1-2; the snippets below start on line 3
PROBE = [
    "[[Probe]]",  # 3
    'Name = "John to Sun"',  # 4
    'From = "John@Contoso.COM"',  # 5
    'To = "sun@tailspintoys.com"',  # 6
    'Watch = "imaps://imap.tailspintoys.com/INBOX"',  # 7
]


def probe(*extra: str, without: tuple[str, ...] = ()) -> str:
    lines = [line for line in PROBE if line.split(" =")[0] not in without]
    return BASE + "\n".join([*lines, *extra]) + "\n"


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text)
    return caught.value.problems


def test_a_probe_with_every_key() -> None:
    text = probe('Via = "Mail.Contoso.com:587"', 'WatchUser = "sun@tailspintoys.com"', 'WatchPasswordEnv = "SUN_IMAP"',
                 "Deadline = 120", "Slow = 30.5", "RoundTrip = true", "MinInterval = 3600")  # fmt: skip
    organization = parse_config(f'[Organization]\nProbeKey = "{"k" * 32}"\n' + text)
    assert organization.probes == (
        ProbeConfig(
            name="John to Sun", sender="John@contoso.com", recipient="sun@tailspintoys.com",
            via="mail.contoso.com:587", watch="imaps://imap.tailspintoys.com/INBOX", watch_user="sun@tailspintoys.com",
            watch_password_env="SUN_IMAP", deadline=120.0, slow=30.5, round_trip=True, min_interval=3600.0,
        ),
    )  # fmt: skip
    assert organization.probe_key == "k" * 32
    # The key is a secret: it is in no repr, and an export of the organization does not carry it.
    assert "k" * 32 not in repr(organization)
    assert organization.probes[0].concerns("CONTOSO.com.") and organization.probes[0].concerns("tailspintoys.com")
    assert not organization.probes[0].concerns("sales.contoso.com")


def test_the_defaults_of_a_probe() -> None:
    (found,) = parse_config(probe()).probes
    assert (found.via, found.watch_password_env, found.deadline, found.slow) == (None, "DIAG_WATCH_PASSWORD", 300.0,
                                                                                  None)  # fmt: skip
    assert found.min_interval == DEFAULT_MIN_INTERVAL == 60.0


def test_probes_are_written_back_by_dump_toml() -> None:
    organization = parse_config(probe('Via = "[2001:db8::25]:25"', 'Watch = "maildir:mail/sun"', "RoundTrip = true",
                                      "MinInterval = 900", without=("Watch",)))
    assert parse_config(dump_toml(organization)).probes == organization.probes


CASES = {
    "no From": (probe(without=("From",)), 'Probe[1].From: missing; add From = "john@contoso.com"', 3),
    "no Watch": (probe(without=("Watch",)), "Probe[1].Watch: missing; add Watch =", 3),
    "no Name": (probe(without=("Name",)), 'Probe[1].Name: missing; add Name = "John to Sun"', 3),
    "non-ASCII To": (probe('To = "sün@tailspintoys.com"', without=("To",)),
                     "Probe[1].To: 'sün@tailspintoys.com' is not an ASCII mail address", 7),
    "bad Via port": (probe('Via = "mail.contoso.com:99999"'),
                     "Probe[1].Via: 'mail.contoso.com:99999' has no valid port", 8),
    "bad Via host": (probe('Via = "mail..contoso.com"'), "Probe[1].Via: ", 8),
    "password in the URL": (probe('Watch = "imap://u:secret@imap.example/INBOX"', without=("Watch",)),
                            "a password does not belong in the URL; give it in the environment", 7),
    "POP3": (probe('Watch = "pop3://mail.example"', without=("Watch",)),
             "Probe[1].Watch: 'pop3://mail.example' is not a mailbox to watch", 7),
    "empty maildir": (probe('Watch = "maildir:"', without=("Watch",)), "maildir: needs a path", 7),
    "variable name": (probe('WatchPasswordEnv = "my password"'), "is not the name of an environment variable", 8),
    "deadline": (probe("Deadline = 0"), "Probe[1].Deadline: 0 is outside 1..86400 seconds", 8),
    "deadline as text": (probe('Deadline = "60"'), "Probe[1].Deadline: found text; write a number of seconds", 8),
    "not a number": (probe("Deadline = nan"), "Probe[1].Deadline: nan is outside 1..86400 seconds", 8),
    "no min interval": (probe("MinInterval = 0"), "Probe[1].MinInterval: 0 is outside 1..86400 seconds", 8),
    "min interval of a week": (probe("MinInterval = 604800"), "Probe[1].MinInterval: 604800 is outside", 8),
    "slow above deadline": (probe("Deadline = 60", "Slow = 60"), "Probe[1].Slow: is not below Deadline", 9),
    "user for a Maildir": (probe('Watch = "maildir:/var/mail/sun"', 'WatchUser = "sun"', without=("Watch",)),
                           "Probe[1].WatchUser: applies only to IMAP", 8),
    "long name": (probe(f'Name = "{"x" * 65}"', without=("Name",)), "must be at most 64 printable characters", 7),
    "short key": ('[Organization]\nProbeKey = "secret"\n' + BASE,
                  "Organization.ProbeKey: 6 characters are too few to keep forged probes out", 2),
}


@pytest.mark.parametrize(("text", "expected", "line"), CASES.values(), ids=CASES.keys())
def test_each_mistake_is_one_line_with_its_place(text: str, expected: str, line: int) -> None:
    found = problems_of(text)
    assert len(found) == 1, found
    assert found[0].startswith(f"<config>:{line}: ") and expected in found[0], found[0]


def test_probe_names_are_unique() -> None:
    found = problems_of(probe() + "\n".join(PROBE) + "\n")
    assert found == (
        "<config>:9: Probe[2].Name: 'John to Sun' is already the Name of Probe[1]; each may appear only once, so "
        "remove or rename one",
    )
    assert Problem("Probe", 2, "Name", "").where == "Probe[2].Name"


def many(count: int) -> str:
    """``count`` [[Probe]] tables of five lines each, the first on line 3."""
    return BASE + "".join(f'[[Probe]]\nName = "Probe {n}"\nFrom = "john@contoso.com"\nTo = "sun@tailspintoys.com"\n'
                          f'Watch = "maildir:mail/sun"\n' for n in range(1, count + 1))  # fmt: skip


def test_twenty_probes_are_the_most_a_configuration_may_hold() -> None:
    # security-cases.md PR-08: a run sends at most MAX_PROBES probes, and a configuration holds no more
    assert MAX_PROBES == 20
    assert len(parse_config(many(MAX_PROBES)).probes) == MAX_PROBES
    assert problems_of(many(MAX_PROBES + 1)) == (
        "<config>:103: Probe[21]: 21 [[Probe]] tables, but a run sends at most 20 probes, so that a cron job cannot "
        "flood an organization; remove this one (or move it to the configuration file of another run)",
    )


def test_probes_beyond_the_cap_are_one_line_however_many() -> None:
    (line,) = problems_of(many(25))
    assert line.startswith("<config>:103: Probe[21]: 25 [[Probe]] tables")
    assert "remove this one and the 4 after it (or move them to" in line
