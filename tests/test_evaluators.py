"""Exact-weight evaluators: dense, slepc (1 and 2 ranks) and cupy agree to 1e-10 relative (DESIGN §4)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from slmc_hpc.errors import ConfigError
from slmc_hpc.systems.double_exchange.evaluators import make_evaluator
from slmc_hpc.systems.double_exchange.evaluators.cupy import device_for_rank, node_local_rank
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins
from tests.conftest import REPO, mpi_env, mpirun

RTOL = 1e-10

#: (lx, ly, hoppings, J, mu, T): nearest neighbours, further shells with J < 0, a rectangle at T = 0.
MODELS = [
    (4, 4, {1: 1.0}, 1.0, 0.0, 0.05),
    (6, 6, {1: 1.0, 2: -0.3, 3: 0.1}, -2.0, 0.3, 0.1),
    (6, 4, {1: 1.0, 2: 0.2}, 4.0, -0.5, 0.0),
]


def model_and_spins(lx, ly, hoppings, J, mu, T, count=3, seed=5):
    model = DoubleExchange(lx, ly, hoppings, J=J, mu=mu, T=T)
    return model, random_spins(np.random.default_rng(seed), (count, model.n_sites))


def assert_agree(result, expected):
    """Ω to RTOL relative; eigenvalues to RTOL relative to the spectral radius."""
    (omega, eigenvalues), (expected_omega, expected_eigenvalues) = result, expected
    assert eigenvalues.shape == expected_eigenvalues.shape
    assert omega.dtype == eigenvalues.dtype == np.float64
    np.testing.assert_allclose(omega, expected_omega, rtol=RTOL, atol=0)
    scale = np.max(np.abs(expected_eigenvalues))
    np.testing.assert_allclose(eigenvalues, expected_eigenvalues, rtol=0, atol=RTOL * scale)


@pytest.mark.parametrize("case", MODELS)
def test_dense_matches_numpy_and_model(case):
    model, spins = model_and_spins(*case)
    omega, eigenvalues = make_evaluator("dense", model).omega(spins)
    reference = np.linalg.eigvalsh(model.hamiltonian(spins))
    np.testing.assert_array_equal(eigenvalues, reference)
    np.testing.assert_allclose(omega, model.omega(spins), rtol=RTOL, atol=0)
    assert omega.shape == (3,) and eigenvalues.shape == (3, model.n_orbitals)


@pytest.mark.parametrize("case", MODELS)
def test_slepc_single_rank_matches_dense(case):
    from mpi4py import MPI

    model, spins = model_and_spins(*case)
    evaluator = make_evaluator("slepc", model, comm=MPI.COMM_SELF)
    expected = make_evaluator("dense", model).omega(spins)
    assert_agree(evaluator.omega(spins), expected)
    # The matrix and solver are reused: a second call with other spins must not see the first.
    assert_agree(evaluator.omega(spins[::-1]), (expected[0][::-1], expected[1][::-1]))
    evaluator.close()


@pytest.mark.parametrize("options", [{"ds_method": 2}, {"eps_type": "lapack"}, {"eps_type": "scalapack"}])
def test_slepc_other_solvers_match_dense(options):
    from mpi4py import MPI

    model, spins = model_and_spins(*MODELS[1], count=2)
    evaluator = make_evaluator("slepc", model, comm=MPI.COMM_SELF, **options)
    assert_agree(evaluator.omega(spins), make_evaluator("dense", model).omega(spins))


def test_slepc_matrix_is_assembled_sparse_per_rank():
    """Each rank's rows hold only hoppings and its own 2x2 blocks: the same h(S) as dense, row by row."""
    from mpi4py import MPI

    from slmc_hpc.systems.double_exchange.evaluators.slepc import local_rows_csr, owned_sites

    model, spins = model_and_spins(5, 4, {1: 1.0, 2: 0.5, 4: 0.25}, -1.5, 0.0, 0.1, count=1)
    dense = model.hamiltonian(spins[0])
    for size in (1, 3):
        blocks = [owned_sites(model.n_sites, size, rank) for rank in range(size)]
        assert [s.start for s in blocks[1:]] == [s.stop for s in blocks[:-1]] and blocks[-1].stop == model.n_sites
        for sites in blocks:
            rows = slice(2 * sites.start, 2 * sites.stop)
            hopping = local_rows_csr(model, sites)
            np.testing.assert_array_equal(hopping.toarray(), model.hopping_matrix[rows])
            assert hopping.nnz < hopping.shape[0] * model.n_orbitals
    evaluator = make_evaluator("slepc", model, comm=MPI.COMM_SELF)
    evaluator._fill(spins[0])
    indptr, indices, values = evaluator.matrix.getValuesCSR()
    assembled = scipy.sparse.csr_matrix((values, indices, indptr), shape=dense.shape).toarray()
    np.testing.assert_allclose(assembled, dense, rtol=0, atol=1e-15)


@pytest.mark.mpi
def test_slepc_two_ranks_match_dense():
    """6x6 and 16x16 on a 2-rank communicator (and 1-rank sub-communicators); both ranks agree bitwise."""
    proc = mpirun(2, [str(REPO / "tests" / "mpi_scripts" / "evaluator_agreement.py")], timeout=240)
    assert "evaluator_agreement: ok on 2 ranks" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("16x16") == 2


def test_device_follows_node_local_rank():
    assert node_local_rank({}) == 0
    assert node_local_rank({"SLURM_LOCALID": "3"}) == 3
    # Open MPI's variable wins over SLURM's when both are set (mpirun inside an allocation).
    assert node_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "SLURM_LOCALID": "5"}) == 1
    assert [device_for_rank(4, {"MPI_LOCALRANKID": str(r)}) for r in range(6)] == [0, 1, 2, 3, 0, 1]
    with pytest.raises(ValueError):
        device_for_rank(0, {})


def gpu_unavailable_reason() -> str | None:
    """Why the GPU tests cannot run here (None if they can)."""
    try:
        import cupy
    except ImportError:
        return "cupy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
        cupy.zeros(1).sum().get()
    except Exception as exc:  # no driver / no device: cupy raises on first use
        return f"no usable GPU ({type(exc).__name__})"
    return None


GPU_REASON = gpu_unavailable_reason()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"GPU tests: {GPU_REASON}")
@pytest.mark.parametrize("case", MODELS + [(16, 16, {1: 1.0}, 1.0, 0.0, 0.05)])
def test_cupy_matches_dense(case):
    model, spins = model_and_spins(*case)
    assert_agree(make_evaluator("cupy", model).omega(spins), make_evaluator("dense", model).omega(spins))


@pytest.mark.skipif(GPU_REASON is None, reason="a GPU is available here")
def test_cupy_without_gpu_names_the_config_key():
    model, _ = model_and_spins(*MODELS[0])
    with pytest.raises(ConfigError, match="evaluator.kind: cupy"):
        make_evaluator("cupy", model)


@pytest.mark.mpi
def test_benchmark_tool_runs_and_prints_both_tables():
    """`make bench` part 1 in smoke mode: the tool runs end to end (incl. its own mpirun) and prints markdown."""
    import subprocess
    import sys

    # mpi_env(): the environment from before this process initialised MPI (a singleton's PMIx variables
    # in the environment would make the tool's own mpirun fail).
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_evaluators.py"), "--quick"],
        env=mpi_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OPENBLAS_NUM_THREADS=1" in proc.stdout
    assert "| 12 | 288 | 8 |" in proc.stdout  # dense vs raw eigvalsh row
    assert "slepc: krylovschur, ds_method 1 (default) | 2 |" in proc.stdout
