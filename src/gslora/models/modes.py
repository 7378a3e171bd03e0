"""Switching a model to eval mode for a moment and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block (no dropout, no stochastic depth, normalisation on its running
    statistics); afterwards every submodule is back in its own earlier mode. Restoring module by module, not with
    ``model.train(was_training)``, keeps a request's frozen BatchNorm in eval mode when the block runs mid-request."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
