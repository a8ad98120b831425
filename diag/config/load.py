"""Reading the TOML configuration: every problem at once, one ``FILE:LINE: Table[i].Field: what; fix`` line each.

Each table entry is checked against its declaration in ``schema.py`` (:func:`build`, which the importer uses
too); unknown keys and tables get a did-you-mean hint. tomllib reports no positions, so :class:`_Lines` finds
the line of each key and table header in the text.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from diag.config.model import Organization
from diag.config.schema import ACCEPTED, ORGANIZATION, TABLES, Table
from diag.config.values import Invalid, either
from diag.errors import ConfigError
from diag.frozen import frozen

__all__ = ["ConfigFileError", "Problem", "build", "load_config", "parse_config", "read_text"]


class ConfigFileError(ConfigError):
    """A configuration or export file is invalid; ``problems`` holds one ``FILE:LINE: where: what; fix`` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@frozen
class Problem:
    table: str
    index: int  # 1-based entry of an array of tables; 0 for a single table and whole tables
    field: str
    message: str

    @property
    def where(self) -> str:
        table = f"{self.table}[{self.index}]" if self.index else self.table
        return f"{table}.{self.field}" if self.field else table


class _Lines:
    """Line numbers of table headers and ``Key =`` lines, which tomllib does not report."""

    _ARRAY = re.compile(r'^\s*\[\[\s*"?([^\]"]+?)"?\s*\]\]')
    _TABLE = re.compile(r'^\s*\[\s*"?([^\]"]+?)"?\s*\]')
    _KEY = re.compile(r'^\s*"?([A-Za-z0-9_-]+)"?\s*=')

    def __init__(self, text: str) -> None:
        self.headers: dict[tuple[str, int], int] = {}
        self.keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current, in_string = ("", 0), False
        for number, line in enumerate(text.splitlines(), 1):
            if not in_string:
                if match := self._ARRAY.match(line):
                    counts[match[1]] = counts.get(match[1], 0) + 1
                    current = (match[1], counts[match[1]])
                    self.headers.setdefault(current, number)
                elif match := self._TABLE.match(line):
                    current = (match[1], 0)
                    self.headers.setdefault(current, number)
                elif match := self._KEY.match(line):
                    self.keys.setdefault((*current, match[1]), number)
            if (line.count('"""') + line.count("'''")) % 2:  # a multi-line string opens or closes
                in_string = not in_string

    def find(self, problem: Problem) -> int:
        table, index = problem.table, problem.index
        return (
            self.keys.get((table, index, problem.field))
            or self.headers.get((table, index))
            or self.headers.get((table, 1))
            or self.keys.get(("", 0, table))
            or 1
        )


def _closest(word: str, choices: Iterable[str]) -> str | None:
    lowered = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


def build(table: Table, index: int, entry: Mapping[str, object], problems: list[Problem]) -> dict[str, object] | None:
    """Convert and check one table's keys; the values by key, or None when the entry has no valid identity."""
    values: dict[str, object] = {}
    bad: set[str] = set()
    for key, raw in entry.items():
        field = table.field(key)
        if field is None:
            keys = [f.key for f in table.fields]
            match = _closest(key, keys)
            fix = f"did you mean {match}?" if match else f"remove it ({table.name} keys: {either(keys, 'and')})"
            bad.add(match or key)  # a misspelt key is not also reported as missing by the rules
            problems.append(Problem(table.name, index, key, f"unknown key; {fix}"))
            continue
        try:
            values[key] = field.convert(raw)
        except Invalid as exc:
            bad.add(key)
            problems.append(Problem(table.name, index, key, str(exc)))
    view = table.defaults() | values
    problems.extend(
        Problem(table.name, index, rule.field, rule.message)
        for rule in table.rules
        if bad.isdisjoint(rule.needs) and rule.broken(view)
    )
    if table.identity and table.identity not in values:
        if table.identity not in bad:
            problems.append(
                Problem(table.name, index, table.identity, f'missing; add {table.identity} = "{table.example}"')
            )
        return None
    return values


def _check_unique(table: Table, entries: Sequence[Mapping[str, object] | None], problems: list[Problem]) -> None:
    """Connector names (per kind) and accepted domains are unique, without regard to case, as in Exchange."""
    seen: dict[str, int] = {}
    for index, values in enumerate(entries, 1):
        if values is not None:
            name = str(values[table.identity])
            if (first := seen.setdefault(name.lower(), index)) != index:
                problems.append(
                    Problem(
                        table.name,
                        index,
                        table.identity,
                        f"{name!r} is already the {table.identity} of {table.name}[{first}]; "
                        "each may appear only once, so remove or rename one",
                    )
                )


def _check_limit(table: Table, count: int, problems: list[Problem]) -> None:
    """One line, on the first entry too many, for an array of tables with more entries than its ``limit``."""
    if not table.limit or count <= table.limit:
        return
    extra = count - table.limit
    which, them = ("this one", "it") if extra == 1 else (f"this one and the {extra - 1} after it", "them")
    problems.append(Problem(
        table.name, table.limit + 1, "",
        f"{count} [[{table.name}]] tables, but {table.limit_why}; remove {which} (or move {them} to the "
        "configuration file of another run)",
    ))  # fmt: skip


def _read(document: Mapping[str, object]) -> tuple[Organization, list[Problem]]:
    """The organization a TOML document describes, and its problems (none when the document is valid)."""
    problems: list[Problem] = []
    singles: dict[str, dict[str, object] | None] = {}
    entries: dict[str, list[dict[str, object] | None]] = {name: [] for name, table in TABLES.items() if table.many}
    for key, value in document.items():
        table = TABLES.get(key)
        if table is None:
            if isinstance(value, dict | list):
                match = _closest(key, TABLES)
                fix = f"did you mean {match}?" if match else f"remove it (the tables are {either(list(TABLES), 'and')})"
                problems.append(Problem(key, 0, "", f"not a table diag knows; {fix}"))
            else:
                problems.append(
                    Problem(key, 0, "", "a key outside any table; put it under a header like [Organization]")
                )
        elif not table.many:
            if isinstance(value, dict):
                singles[key] = build(table, 0, value, problems)
            else:
                problems.append(Problem(key, 0, "", f"must be one table; write [{key}], not [[{key}]]"))
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            entries[key] = [build(table, index, item, problems) for index, item in enumerate(value, 1)]
        else:
            problems.append(Problem(key, 0, "", f"must be an array of tables; write [[{key}]], one per entry"))
    for name, found in entries.items():
        _check_unique(TABLES[name], found, problems)
        _check_limit(TABLES[name], len(found), problems)
    if document.get(ACCEPTED.name, []) == []:
        problems.append(Problem(ACCEPTED.name, 0, "", "none configured; add an [[AcceptedDomain]] for each domain"))
    parts: dict[str, object] = {}
    for table in TABLES.values():
        if table.many:
            parts[table.attr] = tuple(table.make(values) for values in entries[table.name] if values is not None)
        elif table.attr and (single := singles.get(table.name)) is not None:
            parts[table.attr] = table.make(single)
    organization = ORGANIZATION.make(singles.get(ORGANIZATION.name) or {})
    return dataclasses.replace(organization, **parts), problems


def _syntax_error(shown: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    position = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)", message)
    line = int(position[1]) if position and position[1] else max(len(text.splitlines()), 1)
    detail = message[: position.start()] if position else message
    if position and position[2]:
        detail += f" at column {position[2]}"
    if detail.startswith("Invalid value"):
        detail += "; text needs double quotes and true/false are lower-case"
    return f"{shown}:{line}: TOML syntax error: {detail}"


def parse_config(text: str, source: Path | None = None) -> Organization:
    """The organization described by a TOML text; :class:`ConfigFileError` lists every problem, one per line."""
    shown = str(source) if source is not None else "<config>"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([_syntax_error(shown, text, exc)]) from None
    except RecursionError:
        raise ConfigFileError([f"{shown}: not valid TOML: nested too deeply"]) from None
    except ValueError:  # Python reads integers of at most 4300 digits (sys.get_int_max_str_digits)
        raise ConfigFileError([f"{shown}: not valid TOML: a number too large"]) from None
    organization, problems = _read(document)
    if problems:
        lines = _Lines(text)
        located = sorted(((lines.find(problem), problem) for problem in problems), key=lambda pair: pair[0])
        raise ConfigFileError([f"{shown}:{line}: {problem.where}: {problem.message}" for line, problem in located])
    return dataclasses.replace(organization, source=source)


def read_text(path: Path) -> str:
    """A file's text: UTF-8 with or without BOM, or UTF-16 with BOM (Windows PowerShell's ``>``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigFileError([f"{path}: cannot read it: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigFileError([f"{path}:{line}: not UTF-8 text; save the file as UTF-8"]) from None


def load_config(path: Path) -> Organization:
    """The organization described by the TOML file at ``path`` (see :func:`parse_config`)."""
    return parse_config(read_text(path), path)
