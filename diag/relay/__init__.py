"""The routing relay: receives like the cloud (or an on-premises or Internet host), spools durably, delivers by
connector or MX with the TLS each connector demands (ARCHITECTURE §5)."""
