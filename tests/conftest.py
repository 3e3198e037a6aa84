"""Shared fixtures: the real UCI-HAR folder (skipped when absent) and an AdaTime file writer;
the parallel run (pytest-xdist) the README's `python3 -m pytest -q` gets by default.

Parallel: `parallel_workers` in pyproject's [tool.pytest.ini_options] worker processes, one test
file per worker at a time (`--dist loadfile`, so a module's real deployment is started once),
the files that mostly wait on real processes (PROCESS_HEAVY) handed out first so their waits
overlap the compute-bound files. `-n N` picks another count; `-n0` or `-p no:xdist` runs
everything in this one process. Every test takes its ports from the kernel (free_port) and its
files from tmp_path, so any split is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
HAR_DIR = REPO_ROOT.parent / "shared" / "data" / "HAR"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: tests stay bit-stable and do not oversubscribe a 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def har_dir() -> Path:
    """The real UCI-HAR folder beside the repo (read-only); the test is skipped when it is absent."""
    if not (HAR_DIR / "train_2.pt").is_file():
        pytest.skip(f"real UCI-HAR data not found at {HAR_DIR} (expected ../shared/data/HAR)")
    return HAR_DIR


MakeDomainFile = Callable[..., Path]

# Test files whose time is mostly waiting on real SuperLinks, SuperNodes and Ray: run first.
PROCESS_HEAVY = ("test_deploy.py", "test_device_e2e.py", "test_secure_deploy.py",
                 "test_simulation.py", "test_faults.py", "test_resume.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("parallel_workers", "pytest-xdist workers when -n is not given (0: none)",
                  default="0")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Default to `parallel_workers` xdist workers, one file each at a time; in xdist's own
    options, so -n/--dist on the command line win and `-p no:xdist` simply runs serially."""
    opt = config.option
    if (not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput")
            or getattr(opt, "numprocesses", None) is not None
            or getattr(opt, "collectonly", False) or getattr(opt, "usepdb", False)):
        return
    workers = int(config.getini("parallel_workers"))
    if workers > 0:
        opt.numprocesses = workers
        if opt.dist == "no":
            opt.dist = "loadfile"
        opt.loadscopereorder = False  # keep PROCESS_HEAVY first


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = {name: i for i, name in enumerate(PROCESS_HEAVY)}
    items.sort(key=lambda item: heavy.get(item.path.name, len(heavy)))  # stable otherwise


@pytest.fixture
def make_domain_file(tmp_path: Path) -> MakeDomainFile:
    """Factory writing `<folder>/<split>_<domain>.pt` in the AdaTime layout.

    make(samples=None, labels=None, *, split="train", domain="0", folder=None, obj=None) -> Path
    Missing samples/labels default to a valid HAR-shaped domain (8 windows, 9×128, labels 0..5); `obj` writes that object verbatim
    (for non-dict or wrong-key files). The folder defaults to `tmp_path / "data"`.
    """

    def make(samples: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
             split: str = "train", domain: str = "0", folder: Path | None = None,
             obj: object = None) -> Path:
        folder = Path(folder) if folder is not None else tmp_path / "data"
        folder.mkdir(parents=True, exist_ok=True)
        if obj is None:
            x = torch.randn(8, 9, 128, generator=torch.Generator().manual_seed(0))
            y = torch.arange(8) % 6
            obj = {"samples": x if samples is None else samples,
                   "labels": y if labels is None else labels}
        file = folder / f"{split}_{domain}.pt"
        torch.save(obj, file)
        return file

    return make
