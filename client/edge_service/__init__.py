"""The on-device gRPC service (protos/edge.proto): window store, model slot, servicer, server."""
