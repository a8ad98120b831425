"""The checks: one module per check, each exporting its spec as ``CHECK``.

Add a module here and to :data:`MODULES`; the registry test fails for a module that is not listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from diag.registry import Check, Registry

__all__ = ["CONFIGURED", "MODULES", "default_registry"]

# Module names under ``checks``, in the order their results are shown.
MODULES = (
    "mx", "port25", "starttls", "certificate", "connectors",
    # mail authentication and transport policy (issue 14)
    "spf", "dkim", "dmarc", "mtasts", "tlsrpt", "dane", "dnssec",
    "e2e",
)  # fmt: skip

# The modules of the checks that need the organization's configuration (tagged ``config``): a run without one
# does not import them, nor the routing and the probes they bring (issue 13: start-up). The registry test holds
# this list to the checks' tags.
CONFIGURED = ("connectors", "dkim", "e2e")


def default_registry(*, configured: bool = True, only: Sequence[str] = ()) -> Registry:
    """The registry of every check diag ships; with ``configured=False``, without the checks that need the
    organization's configuration (:data:`CONFIGURED`). With ``only`` (check ids, which are their modules'
    names), just those checks and the checks they require, so that a run of some checks imports no other
    check's module (issue 13: start-up); every check when one of them is not among them."""
    import importlib

    names = MODULES if configured else tuple(name for name in MODULES if name not in CONFIGURED)
    if only and set(only) <= set(names):
        loaded: dict[str, Check] = {}
        pending = list(only)
        while pending:
            name = pending.pop()
            if name not in loaded:
                loaded[name] = importlib.import_module(f"checks.{name}").CHECK
                pending.extend(loaded[name].requires)
        if set(loaded) <= set(names) and all(check.id == name for name, check in loaded.items()):
            return Registry(loaded[name] for name in names if name in loaded)
    return Registry(importlib.import_module(f"checks.{name}").CHECK for name in names)
