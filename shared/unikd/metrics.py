"""Accuracy and macro-F1 with scikit-learn's definitions (a test compares them), in percent."""

from __future__ import annotations

import statistics

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    return 100.0 * float((y_true == y_pred).sum()) / len(y_true)


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean F1 over the labels present in y_true or y_pred (sklearn's `average='macro'`).

    A class with no true and no predicted samples is not a label sklearn sees, so it is left out;
    a present class with zero precision and recall scores 0 (sklearn's zero_division=0 value).
    """
    k = num_classes or int(max(int(y_true.max()), int(y_pred.max()))) + 1
    cm = confusion(y_true, y_pred, k).double()
    tp = cm.diag()
    support_true, support_pred = cm.sum(1), cm.sum(0)
    present = (support_true + support_pred) > 0
    denom = support_true + support_pred
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return 100.0 * float(f1[present].mean())


def scores(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> dict[str, float]:
    return {"acc": accuracy(y_true, y_pred), "mf1": macro_f1(y_true, y_pred, num_classes)}


def median(values) -> float:
    """The one median every report uses (the mean of the two middle values for even counts)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def lower_median(values) -> float:
    """The lower middle value: an element of `values`, robust as a reference with 2 clients."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else float("nan")
