"""Stage 4: messages delivered over SMTP, once each, recorded in the ledger.

The only importer of aiosmtplib. ``transport`` is one connection and its typed results;
``pipelining`` the RFC 2920 transactions on it; ``dispatch`` sends due issues through a
pool of connections; ``ratelimit`` paces them; ``send_test`` sends one issue to a few
addresses outside the ledger.
"""
