"""SQL storage: the durable source of truth."""
