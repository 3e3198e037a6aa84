"""Scoring a model on a labelled split (eval mode, every sample, no drop_last).

The model computes on its own device; the windows come from the CPU chunk by chunk and the
predictions go back to the CPU, where the labels and the metrics are."""

from __future__ import annotations

import torch
from torch import nn

from shared.data.adatime import Domain
from shared.data.loaders import eval_chunks
from shared.unikd.compute import module_device, on
from shared.unikd.metrics import scores


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = module_device(model)
    preds = torch.cat([model(on(device, x[s])).argmax(1) for s in eval_chunks(len(x))]).cpu()
    model.train(was_training)
    return preds


def evaluate(model: nn.Module, domain: Domain, num_classes: int) -> dict[str, float]:
    return scores(domain.y, predict(model, domain.x), num_classes)
