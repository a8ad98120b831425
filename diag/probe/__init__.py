"""End-to-end probes (ARCHITECTURE §7): three rooms that only meet through typed facts.

- :mod:`diag.probe.message`: the probe (Message-ID, ``X-Diag-Probe`` token with an optional HMAC) and the pure
  :class:`~diag.probe.message.Matcher`.
- :mod:`diag.probe.sender`: submits one probe through ``--via``; returns ``Accepted`` or ``Refused``.
- :mod:`diag.probe.watch`: watchers (Maildir, IMAP) behind one interface: open, mark, wait, remove, close.
- :mod:`diag.probe.received` and :mod:`diag.probe.judge`: pure; hops, connector evidence, DSNs and verdicts.
- :mod:`diag.probe.pace`: the record of when each probe was last sent, which keeps its ``MinInterval``.

A caller (``diag probe``, the ``e2e`` check) builds the probe, opens and marks the watcher, sends, waits until
the deadline, judges, removes, and maps the verdicts to ``E2E_*`` findings.
"""
