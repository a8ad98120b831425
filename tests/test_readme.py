"""The README tells the truth about what the code declares: its finding-code tables are the registry's."""

from __future__ import annotations

from pathlib import Path

from checks import default_registry

README = Path(__file__).parent.parent / "README.md"


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text``: its rows (header first, separator dropped) as lists of cells."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-:") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _table(header: list[str]) -> list[dict[str, str]]:
    found = [table for table in _tables(README.read_text(encoding="utf-8")) if table[0] == header]
    assert len(found) == 1, f"the README should have one table with the columns {header}"
    return [dict(zip(header, row, strict=True)) for row in found[0][1:]]


def _unquoted(cell: str) -> str:
    return cell.strip("`")


def test_the_code_catalogue_is_the_registry() -> None:
    """Given the README's catalogue, then it lists every code, in order, with its check, severity and meaning."""
    registry = default_registry()
    declared = [(check.id, code, check.codes[code].label, check.meanings[code]) for check in registry
                for code in check.codes]  # fmt: skip

    rows = _table(["check", "code", "severity", "meaning"])

    assert [(_unquoted(r["check"]), _unquoted(r["code"]), r["severity"], r["meaning"]) for r in rows] == declared


def test_the_overview_names_every_code_under_its_check() -> None:
    registry = default_registry()

    rows = _table(["check", "what it verifies", "finding codes"])

    listed = {_unquoted(r["check"].split()[0]): {_unquoted(c.strip()) for c in r["finding codes"].split(",")}
              for r in rows}  # fmt: skip
    assert listed == {check.id: set(check.codes) for check in registry}
