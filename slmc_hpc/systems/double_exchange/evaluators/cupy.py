"""CuPy evaluator: the batch of h(S) built and diagonalised on this rank's GPU.

The spin-independent hopping matrix is uploaded once; per call only the spins travel to the device,
the exchange blocks are added there (the same `DoubleExchange.add_exchange` as on the CPU: CuPy
accepts its NumPy index arrays), and only the eigenvalues come back. Ω is then computed on the host
in float64, by the same `grand_potential` as every other evaluator.

Not yet run on a GPU by the project (no GPU machine was lent to the sessions that wrote it):
`python -m pytest -m gpu tests` on a GPU node is the check (agreement with `dense` to 1e-10).
Installing CuPy: README, "GPU nodes".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from slmc_hpc.errors import ConfigError
from slmc_hpc.systems.double_exchange.physics import DoubleExchange

#: Environment variables that launchers set to a process's rank among the ranks of its node.
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")


def node_local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank on its node, from the first launcher variable that is set (0 if none)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def device_for_rank(n_devices: int, environ: Mapping[str, str] | None = None) -> int:
    """GPU of this rank: node-local rank modulo the number of visible devices (round robin)."""
    if n_devices < 1:
        raise ValueError(f"need at least one device, got {n_devices}")
    return node_local_rank(environ) % n_devices


def import_cupy():
    """The cupy module with a usable GPU, or a ConfigError naming `evaluator.kind: cupy`.

    `import cupy` succeeds on machines without a GPU or driver; the failure only shows on the first
    runtime call, so ask for the device count and create an array before trusting it.
    """
    try:
        import cupy
    except ImportError as exc:
        raise ConfigError(
            f"evaluator.kind: cupy needs CuPy ({exc}); "
            "install the CuPy wheel for the node's CUDA (pip install -e '.[gpu]'; README: GPU nodes) "
            "or use evaluator.kind: dense"
        ) from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
        if n_devices < 1:
            raise RuntimeError("no CUDA device visible")
        cupy.zeros(1).sum().get()
    except Exception as exc:  # CUDARuntimeError, CUDADriverError, RuntimeError, ... depending on the failure
        raise ConfigError(
            f"evaluator.kind: cupy found no usable GPU ({type(exc).__name__}: {exc}); "
            "use evaluator.kind: dense, or check CUDA_VISIBLE_DEVICES and the driver"
        ) from exc
    return cupy


class CupyEvaluator:
    """All eigenvalues of a batch of h(S) by CuPy's batched `eigvalsh` (cuSOLVER) on one GPU.

    `device`: CUDA device index; default `device_for_rank` (node-local rank modulo device count), so
    several ranks on a node spread over its GPUs.
    """

    kind = "cupy"

    def __init__(self, model: DoubleExchange, device: int | None = None):
        cupy = import_cupy()
        import cupyx

        self.model = model
        self._cupy, self._cupyx = cupy, cupyx
        n_devices = cupy.cuda.runtime.getDeviceCount()
        self.device = device_for_rank(n_devices) if device is None else int(device)
        if not 0 <= self.device < n_devices:
            raise ConfigError(f"evaluator.device: {self.device} is not one of the {n_devices} visible GPUs")
        with cupy.cuda.Device(self.device):
            self._hopping = cupy.asarray(model.hopping_matrix, dtype=cupy.complex128)

    def eigenvalues(self, spins: np.ndarray) -> np.ndarray:
        """All eigenvalues of h(S) for spins [..., N, 3] as float64 on the host, ascending, [..., 2N]."""
        cupy, cupyx = self._cupy, self._cupyx
        spins = np.asarray(spins, dtype=np.float64)
        n = self.model.n_orbitals
        batch = spins.reshape((-1,) + spins.shape[-2:])
        with cupy.cuda.Device(self.device):
            h = cupy.empty((batch.shape[0], n, n), dtype=cupy.complex128)
            h[...] = self._hopping
            self.model.add_exchange(h, cupy.asarray(batch))
            # cuSOLVER reports a failed (e.g. unconverged Jacobi) solve only in `info`; make it raise.
            with cupyx.errstate(linalg="raise"):
                eigenvalues = cupy.linalg.eigvalsh(h).get()
        # cuSOLVER's Jacobi solver (used for batches) sorts ascending; sort anyway, it costs nothing.
        return np.sort(eigenvalues, axis=-1).reshape(spins.shape[:-2] + (n,))

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        eigenvalues = self.eigenvalues(spins)
        return self.model.grand_potential(eigenvalues), eigenvalues
