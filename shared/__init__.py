"""Code shared by the cloud (server/) and the edge (client/): data, models, losses, configs, wire.

This package never imports `server` or `client` (tests/test_boundaries.py enforces it).
"""
