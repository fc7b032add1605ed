"""The CQL (Scylla, Cassandra) comment store."""
