"""On-Call: a multi-tenant on-call incident backend."""

__version__ = "0.1.0"
