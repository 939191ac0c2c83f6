"""Compute kernels injected into the networks: the operations factory and its implementations."""

from .ops import TorchOps

__all__ = ["TorchOps"]
