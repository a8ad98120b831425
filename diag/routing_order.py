"""The two readings of how the cloud ranks the outbound connectors that match a recipient (exchange-model §4.1).

Apart from :mod:`diag.routing`, which decides routes and relay rights with the organization's model, so that a
run's options (``--routing-order``) name it without loading either (issue 13: start-up); :mod:`diag.routing`
exports it too.
"""

from __future__ import annotations

import enum

__all__ = ["RoutingOrder"]


class RoutingOrder(enum.StrEnum):
    """How connectors that match a recipient are ranked (exchange-model §4.1)."""

    MOST_SPECIFIC = "most-specific"
    """Default, the worked example's behaviour: exact → longest matching wildcard → all accepted domains → ``*``."""
    DOCUMENTED = "documented"
    """The documentation's listed order: exact → all accepted domains → longest matching wildcard → ``*``."""

    @property
    def other(self) -> RoutingOrder:
        """The other reading."""
        return RoutingOrder.DOCUMENTED if self is RoutingOrder.MOST_SPECIFIC else RoutingOrder.MOST_SPECIFIC
