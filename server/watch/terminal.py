"""`unikd watch`: the dashboard's live view in a terminal (rich), for someone SSH'd into the cloud.

It reads the same state as the dashboard (cloud_state.CloudState: the run folders' status
records and the SuperLink's node state), in this process: no dashboard needs to run.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from server.watch.cloud_state import CloudState

SPARK = "▁▂▃▄▅▆▇█"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, r = divmod(m, 60)
    return f"{h}h {m}m" if h else f"{m}m {r}s" if m else f"{r}s"


def sparkline(values: list[float], width: int = 40) -> str:
    """The last `width` values as block characters between their min and max."""
    values = [v for v in values if v is not None][-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[int((v - lo) / span * (len(SPARK) - 1))] for v in values)


def run_panel(run: dict) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    member = (f" (member {run['member'] + 1} of {run['members']})"
              if run["phase"] == "teacher" and run["member"] is not None else "")
    t.add_row("run", escape(f"{run['name']}  [{run['state']}]"
                            + (f"  {run['error']}" if run["error"] else "")))
    t.add_row("phase", f"{run['phase'] or '–'}{member}")
    t.add_row("round", f"{run['round']} / {run['total']}" if run["total"] else "–")
    t.add_row("exchanges", str(run["exchanges"]))
    t.add_row("elapsed / left", f"{duration(run['elapsed'])} / "
              f"{duration(run['eta']) if run['state'] == 'running' else '–'} (this phase)")
    mf1 = run["evals"]["mf1"]
    t.add_row("MF1", (f"{mf1[-1]:.2f}  {sparkline(mf1)}" if mf1 else "–"))
    for client, values in sorted(run["evals"]["per_client"].items()):
        last = next((v for v in reversed(values) if v is not None), None)
        t.add_row(f"  client {client}", f"{last:.2f}  {sparkline(values)}" if last else "–")
    acc = run["evals"]["acc"]
    t.add_row("accuracy", f"{acc[-1]:.2f}" if acc else "–")
    up, down = run["rounds"]["bytes_up"], run["rounds"]["bytes_down"]
    if up:
        t.add_row("bytes/round", f"up {up[-1] / 1e6:.2f} MB, down {down[-1] / 1e6:.2f} MB "
                  f"(total {(sum(up) + sum(down)) / 1e6:.1f} MB)")
    t.add_row("rejected", str(run["rejected_total"]) + "".join(
        f"\n  round {r['round']}: {escape(r['reason'])}" for r in run["rejected"][-5:]))
    if run["epsilon"]:
        t.add_row("ε spent", ", ".join(f"client {c}: {e:.3f}"
                                        for c, e in sorted(run["epsilon"].items())))
    return t


def edges_table(edges: list[dict], why: str, now: float) -> Table | Text:
    if why:
        return Text(f"edges unknown: {why}", style="red")
    t = Table(title="edges", title_justify="left")
    for col in ("edge", "node", "state", "last contact", "client", "windows", "latency",
                "version"):
        t.add_column(col)
    for e in edges:
        state = Text("connected", style="green") if e["connected"] else Text("gone",
                                                                             style="bold red")
        t.add_row(e["name"] or "–", e["node_id"], state,
                  f"{duration(now - e['last_contact'])} ago" if e["last_contact"] else "never",
                  "–" if e.get("client") is None else str(e["client"]),
                  "–" if e.get("windows") is None else str(e["windows"]),
                  "–" if e.get("latency") is None else f"{e['latency']:.2f} s",
                  "–" if e.get("version") is None else f"v{e['version']}")
    return t


def runs_table(runs: list[dict], limit: int = 5) -> Table:
    t = Table(title="runs", title_justify="left")
    for col in ("run", "state", "phase", "round", "MF1"):
        t.add_column(col)
    for r in runs[:limit]:
        t.add_row(r["name"], r["state"], r.get("phase") or "–",
                  f"{r['round']} / {r['total']}" if r.get("total") else "–",
                  "–" if r.get("mf1") is None else f"{r['mf1']:.2f}")
    return t


def render(snapshot: dict) -> Group:
    run = snapshot["run"]
    parts = [run_panel(run) if run else Text("no runs yet")]
    parts.append(edges_table(snapshot["edges"], snapshot["edges_error"], snapshot["now"]))
    parts.append(runs_table(snapshot["runs"]))
    return Group(*parts)


def watch(state: CloudState, run: str = "latest", interval: float = 1.0,
          once: bool = False) -> int:
    """Redraw every `interval` seconds until Ctrl-C (`once`: print one view and return)."""
    from rich.console import Console

    if once:
        Console().print(render(state.snapshot(run)))
        return 0
    with Live(render(state.snapshot(run)), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(state.snapshot(run)))
        except KeyboardInterrupt:
            return 0


def watch_cmd(args) -> int:
    state = (CloudState.of_cloud(Path(args.state_dir)) if args.runs is None
             else CloudState(Path(args.runs), Path(args.state_dir) if args.state_dir else None))
    return watch(state, args.run, args.interval, args.once)
