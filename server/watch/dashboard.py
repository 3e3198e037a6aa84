"""The cloud's live run dashboard and /metrics: a Starlette app, served on 127.0.0.1 only.

    /                      the newest run's page (= /runs/latest)
    /runs/NAME             one run's page: it polls /api/runs/NAME once a second
    /runs/NAME/files/      the run folder's files (JSON list); /runs/NAME/files/PATH one file
    /api/runs/NAME         the page's data (cloud_state.CloudState.snapshot)
    /metrics               Prometheus text (metrics.py)
    /health                200 "ok" (what the cloud waits for at start, health.py)

Read-only: no route changes anything on the cloud. Like the SuperLink's Control API it listens
on loopback; an operator reaches it through an SSH tunnel, Prometheus from the cloud itself.
The page's assets (static/, uPlot) ship with the package: nothing is fetched from elsewhere.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server.watch.cloud_state import CloudState
from server.watch.metrics import cloud_registry, metrics_text
from server.watch.run_view import run_files
from shared.errors import UnikdError

STATIC = Path(str(resources.files("server.watch") / "static"))
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_app(state: CloudState) -> Starlette:
    """The dashboard over one CloudState (its reads are serialised: one lock)."""
    lock = threading.Lock()
    registry = cloud_registry(state)

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-store"})

    def api_run(request: Request) -> Response:
        try:
            with lock:
                return JSONResponse(state.snapshot(request.path_params["name"]))
        except UnikdError as err:
            return JSONResponse({"error": str(err)}, status_code=404)

    def files(request: Request) -> Response:
        name, rel = request.path_params["name"], request.path_params.get("path", "")
        try:
            with lock:
                run_dir = state.view(name).run_dir.resolve()
        except UnikdError as err:
            return PlainTextResponse(str(err), status_code=404)
        if not rel:
            return JSONResponse(run_files(run_dir))
        target = (run_dir / rel).resolve()
        if run_dir not in target.parents or not target.is_file():  # nothing outside the run
            return PlainTextResponse(f"{rel}: no such file in run {name}", status_code=404)
        return FileResponse(target)

    def metrics(request: Request) -> Response:
        with lock:
            return Response(metrics_text(registry), media_type=PROMETHEUS_TYPE)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/", page), Route("/runs/{name}", page),
        Route("/runs/{name}/files/", files), Route("/runs/{name}/files/{path:path}", files),
        Route("/api/runs/{name}", api_run), Route("/metrics", metrics),
        Route("/health", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static")])
