"""The ingest path: authenticate, normalize, route, then group-commit."""
