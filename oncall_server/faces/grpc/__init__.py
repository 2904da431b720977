"""The gRPC face: thin servicers over the same core functions the HTTP face calls."""
