"""Scoring a model on a labelled split (eval mode, every sample, no drop_last)."""

from __future__ import annotations

import torch
from torch import nn

from shared.data.adatime import Domain
from shared.data.loaders import eval_chunks
from shared.unikd.metrics import scores


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    preds = torch.cat([model(x[s]).argmax(1) for s in eval_chunks(len(x))])
    model.train(was_training)
    return preds


def evaluate(model: nn.Module, domain: Domain, num_classes: int) -> dict[str, float]:
    return scores(domain.y, predict(model, domain.x), num_classes)
