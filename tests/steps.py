"""Small training helpers shared by the wrapper tests: seeded batches, training steps, a mask dataset."""

import torch
from shapes import ring


def xy(shape=(2, 1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).requires_grad_(), torch.rand(shape, generator=g)


def step(loss, *pairs):
    """One training step: call ``loss`` on every pair (several heads), one backward of the sum."""
    values = [loss(x, y) for x, y in pairs]
    sum(v.sum() for v in values).backward()
    return [v.detach() for v in values]


def batch(seed=0, shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).requires_grad_(), torch.rand(shape, generator=g)


def train(loss, x, y, n):
    """``n`` training steps (forward + backward: the clock advances once per backward); the values."""
    values = []
    for _ in range(n):
        value = loss(x, y)
        value.sum().backward()
        values.append(value.detach())
    return values


def run_cycle(loss, x, y, steps):
    """``steps`` training steps on the same batch from a fresh leaf: the values (stacked) and the gradient
    accumulated over them."""
    leaf = x.detach().clone().requires_grad_()
    values = []
    for _ in range(steps):
        value = loss(leaf, y)
        value.sum().backward()
        values.append(value.detach())
    return torch.stack(values), leaf.grad


def dataset(n=4, size=24):
    """n distinct ring-like targets (different ring sizes), as a list of (1, 1, size, size) masks."""
    return [ring(size, outer=2 + i, width=2) for i in range(n)]
