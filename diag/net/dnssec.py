"""dnspython's DNSSEC module (``dns.dnssec``), imported once, here, without cryptography's warnings.

dnspython 2.9's DSA support touches cryptography's deprecated DSA classes when ``dns.dnssec`` is imported; DSA
(algorithm 3) is a zone's choice, not something to warn the operator about on every run. Modules that validate
or sign take ``dnssec`` from here.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import dns.dnssec as dnssec

__all__ = ["dnssec"]
