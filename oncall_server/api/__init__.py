"""Generated protobuf and gRPC code for the ``oncall.v1`` API (see protos/generate.py)."""
