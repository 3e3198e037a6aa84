"""accuracy and macro_f1 agree with scikit-learn (in percent) on random and edge-case labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from shared.unikd.metrics import accuracy, macro_f1, scores


def _sk(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    return (100 * accuracy_score(y_true, y_pred),
            100 * f1_score(y_true, y_pred, average="macro", zero_division=0))


def _random_cases(n_cases: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        k = int(rng.integers(2, 8))
        n = int(rng.integers(1, 60))
        y_true = rng.integers(0, k, n)
        y_pred = rng.integers(0, k, n)
        kind = i % 4
        if kind == 1:  # some classes never predicted
            y_pred = rng.choice(rng.choice(k, size=max(1, k // 2), replace=False), n)
        elif kind == 2:  # some classes absent from y_true
            y_true = rng.choice(rng.choice(k, size=max(1, k // 2), replace=False), n)
        elif kind == 3:  # mostly right
            y_pred = np.where(rng.random(n) < 0.8, y_true, y_pred)
        yield k, y_true, y_pred


def test_random_labels_macro_f1_matches_sklearn():
    for k, y_true, y_pred in _random_cases():
        _, f1 = _sk(y_true, y_pred)
        t, p = torch.from_numpy(y_true), torch.from_numpy(y_pred)
        assert abs(macro_f1(t, p) - f1) < 1e-9, (y_true, y_pred)
        assert abs(macro_f1(t, p, num_classes=k) - f1) < 1e-9, (k, y_true, y_pred)


def test_random_labels_accuracy_matches_sklearn():
    for _, y_true, y_pred in _random_cases():
        acc, _ = _sk(y_true, y_pred)
        assert abs(accuracy(torch.from_numpy(y_true), torch.from_numpy(y_pred)) - acc) < 1e-9, \
            (y_true, y_pred)


@pytest.mark.parametrize("y_true, y_pred", [
    ([0, 1, 2, 3], [0, 1, 2, 3]),  # perfect
    ([0, 0, 0, 0], [1, 1, 1, 1]),  # all wrong, one class each side
    ([0, 0, 1, 1], [0, 0, 0, 0]),  # class 1 never predicted
    ([2, 2, 2], [2, 0, 2]),  # class 0 absent from y_true
    ([5], [5]),  # single sample, high label
    ([0, 3, 3, 0], [3, 0, 0, 3]),  # classes 1 and 2 absent on both sides
])
def test_edge_cases_match_sklearn(y_true, y_pred):
    acc, f1 = _sk(np.array(y_true), np.array(y_pred))
    t, p = torch.tensor(y_true), torch.tensor(y_pred)
    assert abs(accuracy(t, p) - acc) < 1e-9
    assert abs(macro_f1(t, p) - f1) < 1e-9
    assert abs(macro_f1(t, p, num_classes=6) - f1) < 1e-9
    assert scores(t, p, 6) == {"acc": accuracy(t, p), "mf1": macro_f1(t, p, 6)}


def test_accuracy_of_two_thirds_is_exact():
    assert abs(accuracy(torch.tensor([2, 2, 2]), torch.tensor([2, 0, 2])) - 200 / 3) < 1e-9
