"""Shared fixtures: the real UCI-HAR folder (skipped when absent) and an AdaTime file writer."""

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
