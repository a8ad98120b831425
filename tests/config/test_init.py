"""The package's public names (``diag/config/__init__.py``): what the rest of diag imports from ``diag.config``."""

from __future__ import annotations

import diag.config

PUBLIC = {
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
}


def test_every_public_name_is_importable_from_the_package() -> None:
    assert set(diag.config.__all__) == PUBLIC
    assert all(hasattr(diag.config, name) for name in PUBLIC)
