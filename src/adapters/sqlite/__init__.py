"""The SQLite adapters of the all-in-one server."""
