"""Mail authentication and transport policy, judged without I/O: SPF, DMARC, DKIM, MTA-STS, TLS-RPT, DANE, DNSSEC.

Each module parses what DNS (or the MTA-STS web server) publishes into typed facts, and the parts that need
further lookups are I/O-free processes (:class:`diag.policy.lookup.Process`) that say which DNS question they
need next and take the answer; :func:`diag.policy.lookup.drive` answers them with the run's
:class:`diag.net.dns.Resolver`, so every question goes through the run's cache. Tests drive the same processes
with plain data.

Nothing here opens a socket except the drivers; nothing here decides a severity (the check modules do).
"""
