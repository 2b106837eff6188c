"""scikit-learn's digits as a seeded train / test split, and the small Adam loop the
tests train their MLPs with (shared by the test files that compress a trained MLP)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def digits_split(n_train: int = 1300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_train, y_train, X_test, y_test): pixels scaled to [0, 1], a seeded permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def train_adam(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Cross-entropy, Adam (lr 3e-3), seeded shuffles, batches of 100; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        p = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 100):
            idx = p[i:i + 100]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digits_mlp_teacher(X: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """The dense 64-128-128-10 ReLU MLP the distillation tests use as teacher: seeded
    initialisation (torch.manual_seed(0)), 15 epochs of :func:`train_adam`; eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return train_adam(model, X, y, epochs=15)
