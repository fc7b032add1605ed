"""Adapters: the ports implemented in memory, on SQLite, on a CQL cluster and on Redis."""
