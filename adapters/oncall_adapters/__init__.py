"""On-Call's built-in source adapters, registered through the ``oncall`` entry-point group."""
