"""The faces: gRPC and HTTP, thin translations over the same core functions."""
