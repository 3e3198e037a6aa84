"""gRPC definitions for the on-device edge service; imports nothing from the project."""
