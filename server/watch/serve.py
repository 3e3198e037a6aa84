"""The dashboard process the cloud starts (`python -m server.watch.serve`): uvicorn on loopback.

`unikd cloud` runs it beside the SuperLink and the proxy (server/deploy/superlink.py), in its
own process group, so a slow page never slows the training engine and the engine never waits
for it. It binds 127.0.0.1 only, whatever the cloud's public address.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.watch.serve")
    p.add_argument("--state-dir", required=True, help="the cloud's state dir (runs/, cloud.json)")
    p.add_argument("--port", type=int, required=True, help="the loopback port to listen on")
    args = p.parse_args(argv)
    import uvicorn

    from server.watch.cloud_state import CloudState
    from server.watch.dashboard import make_app

    app = make_app(CloudState.of_cloud(Path(args.state_dir)))
    # access_log off: Prometheus and the page poll every few seconds
    uvicorn.run(app, host=LOOPBACK, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
