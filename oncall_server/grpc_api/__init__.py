"""The gRPC face of the core: thin servicers over the same functions the gateway calls."""
