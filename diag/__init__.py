"""diag: validate and diagnose the mail connectors between a cloud mail service and your own SMTP servers."""

__all__ = ["__version__"]

__version__ = "0.1.0"
