"""The registry's own rules: unique ids, known and acyclic dependencies, declared codes, every module listed."""

from __future__ import annotations

import dataclasses
import inspect
import pkgutil

import pytest

import checks
from checks import CONFIGURED, MODULES, default_registry
from diag.errors import RegistryError
from diag.model import Severity
from diag.registry import Check, Outcome, Registry


async def _noop(ctx: object) -> Outcome:
    return Outcome(None, ())


def spec(check_id: str, *requires: str, codes: dict[str, Severity] | None = None) -> Check:
    codes = codes or {}
    meanings = {code: "What it means." for code in codes}
    return Check(check_id, check_id.title(), _noop, codes, requires=requires, meanings=meanings)


def test_dependencies_come_before_dependents() -> None:
    registry = Registry([spec("c", "b"), spec("b", "a"), spec("a")])
    assert [check.id for check in registry.execution_order()] == ["a", "b", "c"]
    assert registry.ids == ("c", "b", "a")  # shown in registration order


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(RegistryError, match="registered twice"):
        Registry([spec("a"), spec("a")])


def test_unknown_dependency_is_refused() -> None:
    with pytest.raises(RegistryError, match="unknown check 'nope'"):
        Registry([spec("a", "nope")])


def test_cycles_are_refused() -> None:
    with pytest.raises(RegistryError, match="cycle"):
        Registry([spec("a", "c"), spec("b", "a"), spec("c", "b")])


@pytest.mark.parametrize("bad_id", ["MX", "port-25", "1st", ""])
def test_ids_are_snake_case_nouns(bad_id: str) -> None:
    with pytest.raises(RegistryError, match="snake_case"):
        Registry([spec(bad_id)])


def test_codes_are_well_formed_and_owned_once() -> None:
    with pytest.raises(RegistryError, match="malformed"):
        Registry([spec("a", codes={"lowercase_code": Severity.INFO})])
    with pytest.raises(RegistryError, match="declared by 'a' and 'b'"):
        Registry([spec("a", codes={"X_OK": Severity.INFO}), spec("b", codes={"X_OK": Severity.INFO})])


@pytest.mark.parametrize(
    ("meanings", "problem"),
    [
        ({}, "declares no one-line meaning for finding code 'A_BAD'"),
        ({"A_BAD": " "}, "declares no one-line meaning for finding code 'A_BAD'"),
        ({"A_BAD": "Two\nlines."}, "declares no one-line meaning for finding code 'A_BAD'"),
        ({"A_BAD": "Bad.", "A_GONE": "Gone."}, "gives a meaning for undeclared finding code 'A_GONE'"),
    ],
)
def test_every_code_has_a_one_line_meaning_and_no_meaning_is_stray(meanings: dict[str, str], problem: str) -> None:
    # diag codes and the README's catalogue print a meaning per code: a code without one fails at start-up.
    with pytest.raises(RegistryError, match=problem):
        Registry([Check("a", "A", _noop, {"A_BAD": Severity.ERROR}, meanings=meanings)])


def test_finding_takes_the_declared_severity_and_refuses_undeclared_codes() -> None:
    check = spec("a", codes={"A_BAD": Severity.ERROR})
    assert check.finding("A_BAD", "host", "msg").severity is Severity.ERROR
    with pytest.raises(RegistryError, match="undeclared"):
        check.finding("A_OTHER", "host", "msg")


def test_select_pulls_in_requirements() -> None:
    registry = Registry([spec("a"), spec("b", "a"), spec("c", "b"), spec("d")])
    assert set(registry.select(["c"]).ids) == {"a", "b", "c"}
    assert registry.select([]) is registry
    with pytest.raises(RegistryError, match="unknown check"):
        registry.select(["zzz"])


def test_lazy_imports_are_every_check_s_each_once_in_registration_order() -> None:
    first = dataclasses.replace(spec("a"), lazy_imports=("heavy.one", "heavy.two"))
    second = dataclasses.replace(spec("b", "a"), lazy_imports=("heavy.two", "heavy.three"))
    assert Registry([first, second, spec("c")]).lazy_imports() == ("heavy.one", "heavy.two", "heavy.three")
    assert Registry([spec("c")]).lazy_imports() == ()


def test_every_check_module_is_registered() -> None:
    on_disk = {info.name for info in pkgutil.iter_modules(checks.__path__)}
    assert on_disk == set(MODULES)
    registry = default_registry()
    for name in MODULES:
        module = __import__(f"checks.{name}", fromlist=["CHECK"])
        assert registry[module.CHECK.id] is module.CHECK


def test_configured_names_the_checks_that_need_the_configuration() -> None:
    # A run without --config builds default_registry(configured=False): it leaves out exactly the checks such a run
    # drops for their "config" tag (diag check), and keeps the others in their order
    everything = default_registry()
    configured = {__import__(f"checks.{name}", fromlist=["CHECK"]).CHECK.id for name in CONFIGURED}
    assert configured == {check.id for check in everything if "config" in check.tags}
    assert default_registry(configured=False).ids == tuple(c.id for c in everything if c.id not in configured)


def test_shipped_checks_declare_positive_codes() -> None:
    # CONTRACT.md: a check that finds nothing wrong says so with its *_OK code, severity info; the end-to-end
    # family's positive code is E2E_DELIVERED, as the contract names it.
    for check in default_registry():
        ok_codes = [code for code in check.codes if code.endswith("_OK") or code == "E2E_DELIVERED"]
        assert ok_codes, check.id
        assert all(check.codes[code] is Severity.INFO for code in ok_codes)


def test_shipped_checks_declare_frozen_dataclasses_as_their_facts() -> None:
    """Report.from_json reads a saved result's facts back into these classes (diag.codec)."""
    registry = default_registry()
    assert set(registry.facts) == set(registry.ids)
    for check_id, kind in registry.facts.items():
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen, check_id  # type: ignore[attr-defined]


def test_every_check_module_has_a_probe_and_an_assess() -> None:
    """Probe, then judge (STYLE rule 1), under the same names in every check: async ``probe`` gathers the
    facts, pure ``assess`` judges them."""
    for name in MODULES:
        module = __import__(f"checks.{name}", fromlist=["probe", "assess"])
        assert inspect.iscoroutinefunction(module.probe), name
        assert callable(module.assess) and not inspect.iscoroutinefunction(module.assess), name
        assert {"probe", "assess"} <= set(module.__all__), name
