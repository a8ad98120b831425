"""Importing the cloud's own exports: ``Get-AcceptedDomain``, ``Get-InboundConnector``, ``Get-OutboundConnector``
piped to ``ConvertTo-Json``, in the shapes both PowerShell versions write (exchange-model.md §8).

Windows PowerShell 5.1 wraps collections and dates in ``{"value": ...}``, writes dates as ``/Date(ms)/`` and
enums as numbers, and its ``>`` writes UTF-16. Records are checked with the loader's own :func:`build`, so an
import accepts what ``diag config check`` accepts; a value that does not validate is kept as written (see
:class:`ImportResult`) for ``diag config check`` to report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diag.config.dump import Verbatim, dump_toml
from diag.config.load import ConfigFileError, Problem, build, read_text
from diag.config.model import AcceptedDomain, Organization
from diag.config.schema import ACCEPTED, INBOUND, OUTBOUND, Field, Table
from diag.config.values import either
from diag.frozen import frozen

__all__ = ["ImportResult", "import_exports"]

_KINDS = (ACCEPTED, OUTBOUND, INBOUND)  # the tables an export can fill
_OUTBOUND_MARKS = frozenset({"SmartHosts", "UseMXRecord", "RecipientDomains", "TlsSettings", "AllAcceptedDomains"})
_INBOUND_MARKS = frozenset({"SenderDomains", "SenderIPAddresses", "TlsSenderCertificateName", "RequireTls"})
_NOT_AN_EXPORT = "give the output of Get-AcceptedDomain, Get-InboundConnector or Get-OutboundConnector | ConvertTo-Json"
# Half of a UTF-16 pair: JSON can escape one alone ("\\ud800"); no UTF-8 file can hold it (RFC 8259 §8.2).
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@frozen
class ImportResult:
    """What ``diag config import`` made of the exports.

    Attributes:
        organization: the imported organization; an invalid value is left at the model's default here.
        notes: one line per thing worth knowing (unknown values kept, objects skipped, settings to add).
        sources: the export files, in the order given.
        verbatim: values that did not validate, written to the TOML as found so ``diag config check`` reports them.
    """

    organization: Organization
    notes: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
    verbatim: tuple[Verbatim, ...] = ()

    def to_toml(self) -> str:
        """The TOML configuration, values that did not validate included as found."""
        return dump_toml(self.organization, sources=self.sources, verbatim=self.verbatim)


def _json_objects(path: Path) -> list[dict[str, object]]:
    """The objects of one ``ConvertTo-Json`` file: one object, an array, or PS 5.1's ``{"value": [...]}``."""
    text = read_text(path)
    if not text.strip():
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}; {_NOT_AN_EXPORT}"
        raise ConfigFileError([problem]) from None
    except RecursionError:
        raise ConfigFileError([f"{path}: invalid JSON: nested too deeply; {_NOT_AN_EXPORT}"]) from None
    except ValueError:  # Python reads integers of at most 4300 digits (sys.get_int_max_str_digits)
        raise ConfigFileError([f"{path}: invalid JSON: a number too large; {_NOT_AN_EXPORT}"]) from None
    if isinstance(document, dict) and set(document) <= {"value", "Count"} and isinstance(document.get("value"), list):
        document = document["value"]
    items = document if isinstance(document, list) else [document]
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ConfigFileError([f"{path}: item {number} is not a JSON object; {_NOT_AN_EXPORT}"])
    return items


def _table_of(record: Mapping[str, object]) -> Table | None:
    if "DomainName" in record and "DomainType" in record:
        return ACCEPTED
    outbound, inbound = not _OUTBOUND_MARKS.isdisjoint(record), not _INBOUND_MARKS.isdisjoint(record)
    return None if outbound == inbound else OUTBOUND if outbound else INBOUND


def _as_text(field: Field | None) -> str:
    """How to make PowerShell write a property as text: a calculated property of Select-Object."""
    key = field.key if field else ""
    value = f"[string[]]$_.{key}" if field and field.json == "list" else f'"$($_.{key})"'
    return f"as text, e.g. Select-Object @{{n='{key}';e={{{value}}}}}"


def _from_json(table: Table, record: Mapping[str, object], label: str, errors: list[str]) -> dict[str, object]:
    """The record's values in TOML shape (exchange-model §8); fields missing from it keep the model's defaults."""
    values: dict[str, object] = {}
    numbers: list[str] = []
    for field in table.fields:
        value = record.get(field.key)
        if isinstance(value, dict) and "value" in value and field.json in ("list", "date"):
            value = value["value"]  # Windows PowerShell 5.1 wraps collections and dates in {"value": ...}
        if value is None:
            continue
        if field.json == "enum" and isinstance(value, int) and not isinstance(value, bool):
            numbers.append(field.key)
        elif isinstance(value, dict) or (isinstance(value, list) and not all(isinstance(i, str) for i in value)):
            errors.append(f"{label}: {field.key} holds JSON objects, not text; export it {_as_text(field)}")
        elif _SURROGATE.search("".join(value) if isinstance(value, list) else str(value)):
            errors.append(f"{label}: {field.key} is not valid Unicode (half a surrogate pair); correct it in Exchange")
        else:
            values[field.key] = value
    if numbers:
        # Windows PowerShell 5.1 writes enums as numbers; the numbering is not ours to guess (exchange-model §8).
        errors.append(
            f"{label}: {either(numbers, 'and')} {'is a number' if len(numbers) == 1 else 'are numbers'}, not names; "
            f"export again with ConvertTo-Json -EnumsAsStrings (PowerShell 7) or {_as_text(table.field(numbers[0]))}"
        )
    return values


def import_exports(paths: Sequence[Path]) -> ImportResult:
    """Read ``Get-AcceptedDomain``/``Get-InboundConnector``/``Get-OutboundConnector | ConvertTo-Json`` files.

    Kinds may be mixed across and within files; they are told apart by their fields. Raises
    :class:`ConfigFileError` for unreadable files, bad JSON, objects that are not Exchange exports and enums
    written as numbers; everything else is imported, with a note where a value needs attention.
    """
    errors: list[str] = []
    notes: list[str] = []
    found: dict[str, list[tuple[str, dict[str, object]]]] = {table.name: [] for table in _KINDS}
    for path in paths:
        try:
            records = _json_objects(path)
        except ConfigFileError as exc:
            errors.extend(exc.problems)
            continue
        if not records:
            notes.append(f"{path}: no objects in it (the cmdlet returned nothing); skipped")
        for number, record in enumerate(records, 1):
            table = _table_of(record)
            name = record.get("Name", record.get("DomainName", record.get("Identity")))
            label = f"{path}: object {number}" + (f" ({table.name if table else 'named'} {name!r})" if name else "")
            if table is None:
                errors.append(f"{label}: neither an accepted domain nor one kind of connector; {_NOT_AN_EXPORT}")
            else:
                found[table.name].append((label, _from_json(table, record, label, errors)))
    if errors:
        raise ConfigFileError(errors)
    verbatim: list[Verbatim] = []
    made = {table.name: _import_table(table, found[table.name], notes, verbatim) for table in _KINDS}
    accepted: tuple[AcceptedDomain, ...] = made[ACCEPTED.name]
    if not accepted:
        notes.append("no accepted domains in these exports; add the output of Get-AcceptedDomain | ConvertTo-Json")
    notes.append(
        'the exports do not say where MX must point; add MxHost = "<tenant>.mail.protection.outlook.com" '
        "under [Organization]"
    )
    main = next((a for a in accepted if a.default), accepted[0] if accepted else None)
    organization = Organization(
        accepted_domains=accepted,
        outbound_connectors=made[OUTBOUND.name],
        inbound_connectors=made[INBOUND.name],
        name=main.domain_name if main else "",
    )
    return ImportResult(organization, tuple(notes), tuple(paths), tuple(verbatim))


def _import_table(
    table: Table, found: Sequence[tuple[str, dict[str, object]]], notes: list[str], verbatim: list[Verbatim]
) -> tuple[Any, ...]:
    made: list[Any] = []
    seen: dict[str, str] = {}
    for label, raw in found:
        problems: list[Problem] = []
        values = build(table, 0, raw, problems)
        if values is None:
            notes.append(f"{label}: skipped: {'; '.join(f'{p.field} {p.message}' for p in problems)}")
            continue
        name = str(values[table.identity]).lower()
        if name in seen:
            notes.append(f"{label}: skipped: the same {table.identity} as {seen[name]}")
            continue
        seen[name] = label
        made.append(table.make(values))
        for problem in problems:
            kept = problem.field in raw and problem.field not in values
            if kept:
                verbatim.append((table.name, len(made), problem.field, raw[problem.field]))
            how = "kept as written; `diag config check` reports it" if kept else "`diag config check` reports it"
            notes.append(f"{label}: {problem.field}: {problem.message} ({how})")
    return tuple(made)
