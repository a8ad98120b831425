"""The HTML report in a real browser: headless Chromium, driven by Playwright, with JavaScript enabled.

Opens the report of a lab run that includes hostile.example, and a report with a payload in every field, and
checks that nothing ran, nothing was fetched, nothing was blocked (there is nothing to block), and that the
hostile strings are there as visible text (security-cases.md RPT-01 ... RPT-05).

Needs Debian's ``chromium`` package (/usr/bin/chromium) and the ``playwright`` Python package; browsers are not
downloaded (no ``playwright install``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from checks import default_registry
from diag.lab.runner import Lab
from diag.render.html import render_document as render_html
from diag.render.json import report_dict
from diag.runner import run_checks

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

DOMAINS = ("contoso.com", "multi.example", "expired.example", "hostile.example")
PWN = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1><svg onload=window.__pwned=1>"


@dataclass
class Visit:
    """What the browser saw while a page was open."""

    text: str
    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pwned: str = ""
    active: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def visit(browser: Any, path: Path) -> Visit:
    page = browser.new_page()
    seen = Visit(text="")
    page.on("console", lambda message: seen.console.append((message.type, message.text)))
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))

    def dialog(d: Any) -> None:
        seen.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    try:
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_timeout(300)  # time for an onerror/onload that would fire late
        seen.text = page.inner_text("body")
        seen.pwned = page.evaluate("typeof window.__pwned")
        seen.active = page.evaluate(
            """() => Array.from(document.querySelectorAll(
                   'script, img, iframe, object, embed, link, base, form, input, meta[http-equiv=refresh], '
                   + '[onload], [onerror], [onmouseover], [onclick], [style], [src], a[href]:not([href^="#domain-"])'
               )).map(e => e.outerHTML.slice(0, 80))"""
        )
    finally:
        page.close()
    return seen


def assert_nothing_happened(seen: Visit, path: Path) -> None:
    assert [c for c in seen.console if c[0] == "error"] == []
    # No CSP report either: the policy had nothing to block.
    assert not [c for c in seen.console if "Content Security Policy" in c[1]]
    assert seen.requests == [path.as_uri()]
    assert seen.dialogs == [] and seen.errors == []
    assert seen.pwned == "undefined"
    assert seen.active == []


@pytest.fixture(scope="module")
def lab_document(lab: Lab) -> dict[str, Any]:
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        run = run_checks(DOMAINS, default_registry(), lab.run_options(timeout=1.0))
        return report_dict(pool.submit(asyncio.run, run).result(timeout=60))


@pytest.fixture(scope="module")
def lab_page(lab_document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "report.html"
    path.write_text(render_html(lab_document), encoding="utf-8")
    return path


def poison(value: Any, payload: str) -> Any:
    """``value`` with every string in it replaced by ``payload`` (except the schema name, so it renders)."""
    if isinstance(value, dict):
        return {k: (v if k == "schema" else poison(v, payload)) for k, v in value.items()}
    if isinstance(value, list):
        return [poison(v, payload) for v in value]
    return payload if isinstance(value, str) else value


def test_the_report_of_a_hostile_host_runs_nothing_and_fetches_nothing(browser: Any, lab_page: Path) -> None:
    seen = visit(browser, lab_page)
    assert_nothing_happened(seen, lab_page)
    # The hostile strings are on the page as text a person can read.
    for visible in (
        '<script>alert(1)</script> "><img src=x onerror=alert(1)> {{7*7}} U+202Eexe.txt \\x1b[2J\\x07',
        "X-PWN <svg onload=window.__pwned=1>",
        "X-TABLE </td></tr></table><h1>pwned</h1>",
        "X-BIDI U+202Eexe.txtU+2066",
        "CN=U+202E\\<b\\>mx.hostile.example\\</b\\>",
        '"><img src=x onerror=alert(1)>',
        "{{7*7}}.hostile.example",
        "<svg/onload=alert`1`>",
    ):
        assert visible in seen.text, visible
    assert "\u202e" not in seen.text and "\x1b" not in seen.text
    for domain in DOMAINS:
        assert domain in seen.text


def test_a_payload_in_every_field_runs_nothing(browser: Any, lab_document: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "poisoned.html"
    path.write_text(render_html(poison(lab_document, PWN)), encoding="utf-8")
    seen = visit(browser, path)
    assert_nothing_happened(seen, path)
    assert PWN in seen.text


def test_problems_to_fix_renders_and_every_link_lands_on_its_finding(browser: Any, lab_page: Path) -> None:
    """The "Problems to fix" block is on screen above the details; every in-page link points at an element
    that exists, and following a problem's link shows its finding; an OK domain's evidence opens on a click."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(lab_page.as_uri(), wait_until="load")
        rows = page.locator("section.problems tr.fix")
        assert rows.count() >= 3
        first = rows.first
        assert first.locator(".sev-pill").inner_text().lower() == "critical"
        # The block comes before every domain's details.
        assert page.evaluate(
            """() => Array.from(document.querySelectorAll('section.domain')).every(
                   s => document.querySelector('section.problems').compareDocumentPosition(s)
                        & Node.DOCUMENT_POSITION_FOLLOWING)"""
        )
        broken = page.evaluate(
            """() => Array.from(document.querySelectorAll('a[href]'))
                   .map(a => a.getAttribute('href'))
                   .filter(h => !h.startsWith('#') || document.getElementById(h.slice(1)) === null)"""
        )
        assert broken == []
        link = first.locator("a.code")
        code = link.inner_text()
        anchor = link.get_attribute("href")
        link.click()
        assert page.evaluate("location.hash") == anchor
        target = page.locator(anchor)
        assert target.is_visible() and code in target.inner_text()
        assert page.evaluate(
            """(anchor) => { const r = document.getElementById(anchor.slice(1)).getBoundingClientRect();
                             return r.bottom > 0 && r.top < window.innerHeight; }""",
            anchor,
        )
        # contoso.com is OK: its evidence is collapsed, and opens with a click (no script involved).
        ok = page.locator("section.domain", has=page.locator("h2", has_text="contoso.com"))
        assert ok.locator("span.verdict").inner_text() == "OK"
        card = ok.locator("details.evidence .card").first
        policy = ok.locator("details.evidence-policy .card").first
        assert not card.is_visible() and not policy.is_visible()
        ok.locator("details.evidence-mail > summary").click()
        assert card.is_visible() and not policy.is_visible()
        ok.locator("details.evidence-policy > summary").click()
        assert policy.is_visible()
        # A domain with problems shows its evidence at once.
        expired = page.locator("section.domain", has=page.locator("h2", has_text="expired.example"))
        assert expired.locator("details.evidence .card").first.is_visible()
        head = " ".join(expired.locator("div.presented .session-head").first.inner_text().split())
        assert "chain trusted, but: leaf expired 1 day ago" in head
    finally:
        page.close()


def test_the_csp_is_in_force(browser: Any, tmp_path: Path) -> None:
    """Control: the same policy blocks an inline script that we put in ourselves (so a pass above means
    nothing was there, not that the policy was absent)."""
    page_text = render_html(json.loads(json.dumps(_minimal())))
    planted = page_text.replace("</body>", "<script>window.__pwned=1</script></body>")
    path = tmp_path / "planted.html"
    path.write_text(planted, encoding="utf-8")
    seen = visit(browser, path)
    assert seen.pwned == "undefined"
    assert any("Content Security Policy" in text for _, text in seen.console)


def _minimal() -> dict[str, Any]:
    return {
        "schema": "diag.report/1", "tool": {"name": "diag", "version": "0.1.0"},
        "started_at": "2026-11-26T12:00:00Z", "finished_at": "2026-11-26T12:00:01Z", "status": "ok",
        "exit_code": 0, "domains": [{"domain": "example.com", "status": "ok", "checks": []}],
    }  # fmt: skip
