"""The cloud ServerApp: a custom `@app.main()` loop around server.rounds.federate.

`flwr run` fills `context.run_config` from [tool.flwr.app.config] (`config-path`, `overrides`);
the simulation launcher builds an app around an already-loaded RunConfig instead.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.rounds import federate
from shared.config import RunConfig, load_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    import logging
    from pathlib import Path

    from server.fed_run import write_fed_run
    from shared.runs import make_run_dir

    handler = logging.StreamHandler()  # Flower ships the ServerApp's stderr to `flwr log`
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("server", "shared"):  # not basicConfig: httpx at INFO would flood the log
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split() if o]
    resume = str(rc.get("resume", "")) or None
    if resume:  # continue an interrupted run in its own folder, with its own resolved config
        run_dir = Path(resume)
        cfg = load_config(run_dir / "config.yaml", overrides)
    else:
        cfg = load_config(str(rc.get("config-path", "")) or None, overrides)
        run_dir = make_run_dir(cfg.out, f"federate-{cfg.data.dataset}-{cfg.fed.clients}clients")
        cfg.dump(run_dir / "config.yaml")
    result = federate(grid, cfg, progress=False, run_dir=run_dir,
                      resume=run_dir if resume else None)
    write_fed_run(run_dir, cfg, result)


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
