"""labctl: run and track ML experiments with an append-only event log in Postgres."""

__version__ = "0.1.0"
