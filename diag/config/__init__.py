"""The organization: accepted domains, inbound and outbound connectors, in Exchange's own vocabulary.

The model is frozen data named after the cloud's cmdlet parameters (ARCHITECTURE §4, exchange-model.md §1-§3,
§9) so that an administrator recognises every field. It is read from a TOML file (:func:`load_config`) and can
be made from the JSON that ``Get-AcceptedDomain``, ``Get-InboundConnector`` and ``Get-OutboundConnector`` piped
to ``ConvertTo-Json`` produce (:func:`import_exports`).

One concern per module:

    model.py      the organization model: enums and frozen dataclasses, no I/O
    values.py     converters: a TOML or JSON value in, the model's value or "what; fix" out
    schema.py     the tables declared: keys, converters, cross-field rules (add a key or table here)
    load.py       reading TOML: every problem as ``FILE:LINE: Table[i].Field: what; fix``, did-you-mean hints
    exchange.py   importing ``ConvertTo-Json`` exports, PowerShell 5.1 and 7 shapes
    dump.py       writing TOML back
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diag.config.model import (
    DEFAULT_MIN_INTERVAL,
    MAX_PROBES,
    AcceptedDomain,
    ConnectorType,
    DomainType,
    InboundConnector,
    Organization,
    OutboundConnector,
    ProbeConfig,
    RelayConfig,
    RelayRole,
    TlsSettings,
    domain_in_pattern,
)

if TYPE_CHECKING:
    from diag.config.dump import dump_toml
    from diag.config.exchange import ImportResult, import_exports
    from diag.config.load import ConfigFileError, load_config, parse_config

__all__ = [
    "DEFAULT_MIN_INTERVAL",
    "MAX_PROBES",
    "AcceptedDomain",
    "ConfigFileError",
    "ConnectorType",
    "DomainType",
    "ImportResult",
    "InboundConnector",
    "Organization",
    "OutboundConnector",
    "ProbeConfig",
    "RelayConfig",
    "RelayRole",
    "TlsSettings",
    "domain_in_pattern",
    "dump_toml",
    "import_exports",
    "load_config",
    "parse_config",
]

# Reading, importing and writing files (tomllib, json, tomli_w, the schema) load on first use: the model is all
# that a run without a configuration file touches (issue 13: start-up).
_LAZY = {
    "ConfigFileError": "load", "load_config": "load", "parse_config": "load",
    "ImportResult": "exchange", "import_exports": "exchange",
    "dump_toml": "dump",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
