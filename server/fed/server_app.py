"""The cloud ServerApp: a custom `@app.main()` loop around server.fed.rounds.federate.

`flwr run` fills `context.run_config` from [tool.flwr.app.config] (`config-path`, `overrides`);
the simulation launcher builds an app around an already-loaded RunConfig instead.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.fed.live_status import End, LiveStatus
from server.fed.rounds import federate
from server.fed.run_folder import open_run_dir, resume_config, resume_dir, write_fed_run
from shared.platform import flower_pins, flower_pulls
from shared.config import RunConfig, load_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    import logging

    handler = logging.StreamHandler()  # Flower ships the ServerApp's stderr to `flwr log`
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("server", "shared"):  # not basicConfig: httpx at INFO would flood the log
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
    # Replies reach the SuperLink before their objects; Flower's object pull then waits 1 s
    # before its first retry. On the deployed path only (the simulations pull nothing).
    flower_pins.check()
    flower_pulls.shorten_object_backoff()
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split() if o]
    resume = str(rc.get("resume", "")) or None
    if resume:  # continue an interrupted run in its own folder, with its own resolved config
        resume = str(resume_dir(resume, Path.cwd() / "runs"))  # cwd: the cloud's state dir
        cfg = resume_config(Path(resume), overrides)
    else:
        cfg = load_config(str(rc.get("config-path", "")) or None, overrides)
    run_dir = open_run_dir(cfg, Path(resume) if resume else None)
    status = LiveStatus(run_dir)  # the end of the run, for the dashboard (server/watch/)
    try:
        # The working directory is the cloud's state dir: its deliveries/ keeps the last final
        # student for nodes that miss a delivery (server/fed/delivery.py).
        result = federate(grid, cfg, progress=False, run_dir=run_dir,
                          resume=run_dir if resume else None, delivery_dir=Path("deliveries"),
                          run_id=int(context.run_id))
        write_fed_run(run_dir, cfg, result)
    except BaseException as err:
        status.write(End("failed", f"{type(err).__name__}: {err}"[:500]))
        raise
    status.write(End("completed"))


def make_server_app(cfg: RunConfig, box: dict, progress: bool = False, run_dir=None,
                    resume=None) -> ServerApp:
    """A ServerApp bound to `cfg`; the result (or the error) is left in `box`."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            box["result"] = federate(grid, cfg, progress=progress, run_dir=run_dir, resume=resume)
        except Exception as exc:  # surfaced by the launcher after Ray shuts down
            box["error"] = exc
            raise

    return bound
