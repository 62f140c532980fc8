"""Expensive per-configuration results kept for when the same configuration comes back, bit for bit.

HMC evaluates a trajectory's last force, its exact test and (accepted or not) the next trajectory's first
force and the measurement at configurations it has just factorised or diagonalised. A `ConfigurationMemo`
keeps those results under the configuration's bytes, so a repeat costs a lookup and gives the same bits as
recomputing (the work is deterministic), which keeps runs reproducible and resumable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def _nbytes(value: np.ndarray | torch.Tensor | tuple) -> int:
    """Bytes held by a result: arrays and tensors by their buffers, tuples by their parts."""
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    return int(np.asarray(value).nbytes)


class ConfigurationMemo:
    """A least-recently-used store of per-configuration results within `budget` bytes.

    It keeps at least the batch of the last call, whatever its size, so a trajectory's last force reaches
    its test and the measurement after it.
    """

    def __init__(self, budget: int):
        self.budget = int(budget)
        self._kept: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        #: configurations whose results were computed (not found)
        self.computed = 0

    def results(self, configs: np.ndarray, compute: Callable[[np.ndarray], Sequence[Any]]) -> list[Any]:
        """The result of each configuration in `configs` [B, ...]: kept ones looked up, the others from
        `compute(indices)`, which returns one result per index (in order) and is called at most once."""
        keys = [np.ascontiguousarray(config).tobytes() for config in configs]
        missing = [b for b, key in enumerate(keys) if key not in self._kept]
        fresh = {}
        if missing:
            computed = compute(np.array(missing))
            self.computed += len(missing)
            fresh = {keys[b]: value for b, value in zip(missing, computed, strict=True)}
        out = []
        for key in keys:
            if key in fresh:
                value = fresh[key]
                if key not in self._kept:
                    size = _nbytes(value) + len(key)
                    self._kept[key] = (value, size)
                    self._bytes += size
            else:
                value = self._kept[key][0]
            self._kept.move_to_end(key)
            out.append(value)
        while self._bytes > self.budget and len(self._kept) > len(keys):
            _, (_, size) = self._kept.popitem(last=False)
            self._bytes -= size
        return out
