"""`unikd edge --store DB --model-dir DIR`: the SuperNode of a device that runs `unikd serve`.

The node trains each round on the windows the service stored so far (node config `store-path`)
and installs the run's final student into the directory the service serves (`model-dir`). Both
paths are checked before anything starts: the store must be a window store, and its window shape
must be the service's (service.json, written by `unikd serve --model-dir`).

client/node/supernode.py builds the command (the same launcher, executor and app-signature
check as any edge); this module checks the device's two paths.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import UnikdError


def check_device(store: Path, model_dir: Path | None) -> None:
    """A store `unikd serve` created, and (with a model dir) the same window shape in both."""
    from client.edge_service.store import store_shape
    from client.edge_service.versions import service_shape

    shape = store_shape(store)  # DataError naming the store when it is not one
    wanted = service_shape(model_dir) if model_dir is not None else None
    if wanted is not None and wanted != shape:
        raise UnikdError(f"--store {store} holds windows of shape {shape}, the service serving "
                         f"--model-dir {model_dir} takes {wanted}: not the same service")
