"""Flower's object pulls, made to retry within milliseconds: the one Flower internal both sides
patch (the edge's SuperNode and executor, the cloud's ServerApp). Pinned and checked in
flower_pins.py."""

from __future__ import annotations


def shorten_object_backoff(initial: float = 0.05, cap: float = 0.5) -> None:
    """Object pulls retry after 1, 2, 4..10 s by default; a missing object on loopback or a
    LAN is usually there within milliseconds."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        fn.__kwdefaults__["initial_backoff"] = initial  # type: ignore[index]
        fn.__kwdefaults__["backoff_cap"] = cap  # type: ignore[index]
