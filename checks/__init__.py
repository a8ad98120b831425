"""The checks: one module per check, each exporting its spec as ``CHECK``.

Add a module here and to :data:`MODULES`; the registry test fails for a module that is not listed.
"""

from __future__ import annotations

from diag.registry import Registry

__all__ = ["MODULES", "default_registry"]

# Module names under ``checks``, in the order their results are shown.
MODULES = (
    "mx", "port25", "starttls", "certificate", "connectors",
    # mail authentication and transport policy (issue 14)
    "spf", "dkim", "dmarc", "mtasts", "tlsrpt", "dane", "dnssec",
    "e2e",
)  # fmt: skip


def default_registry() -> Registry:
    """The registry of every check diag ships."""
    import importlib

    return Registry(importlib.import_module(f"checks.{name}").CHECK for name in MODULES)
