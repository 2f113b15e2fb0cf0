"""Small digits models trained for a few seconds inside the tests (cached per test process)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn

SIZE = (1, 16, 16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy shared machine cannot oversubscribe it.

    Test modules import this fixture, which makes it autouse there.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plain_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def depthwise_cnn(act=nn.ReLU) -> nn.Module:
    """A MobileNet-like stack: conv, depthwise, pointwise, with batch norms."""
    def cba(cin, cout, k=3, groups=1):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()]

    return nn.Sequential(
        *cba(1, 16), *cba(16, 16, groups=16), *cba(16, 32, k=1), nn.MaxPool2d(2),
        *cba(32, 32, groups=32), *cba(32, 64, k=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


@functools.lru_cache(maxsize=None)
def digits_tensors():
    from slimkit.data import load_data

    bundle = load_data("digits", SIZE)
    return bundle.train.tensors(), bundle.val.tensors()


def train(model: nn.Module, epochs: int = 5, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    (x, y), _ = digits_tensors()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            idx = order[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@functools.lru_cache(maxsize=None)
def _trained(kind: str) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is fastest, and immune to a busy machine
    try:
        torch.manual_seed(0)
        model = plain_cnn() if kind == "plain" else depthwise_cnn()
        return train(model, epochs=5, lr=1e-2 if kind == "plain" else 5e-3)
    finally:
        torch.set_num_threads(threads)


def trained(kind: str = "plain") -> nn.Module:
    """A fresh copy of a digits CNN trained for ~2 s (val accuracy ~90-96%)."""
    return copy.deepcopy(_trained(kind))


def torch_accuracy(model: nn.Module) -> float:
    _, (vx, vy) = digits_tensors()
    with torch.no_grad():
        return float((model(vx).argmax(1) == vy).float().mean() * 100)


class FakeClock:
    """A clock that only advances when a fake runner 'runs': timings become exact, known numbers."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner_for(self, cost_fn):
        def make(path):
            cost = cost_fn(path)

            def run():
                self.now += cost

            return run

        return make
