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
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split() if o]
    cfg = load_config(str(rc.get("config-path", "")) or None, overrides)
    from server.fed_run import write_fed_run
    from shared.runs import make_run_dir

    run_dir = make_run_dir(cfg.out, f"federate-{cfg.data.dataset}-{cfg.fed.clients}clients")
    cfg.dump(run_dir / "config.yaml")
    result = federate(grid, cfg, progress=False, run_dir=run_dir)
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
