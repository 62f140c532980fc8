"""SLEPc evaluator: one configuration's h(S) as a distributed PETSc matrix on a sub-communicator.

For lattices whose dense 2N x 2N matrix outgrows one node (docs/design.md §4): each rank of `comm` assembles
only its own rows of h(S) (sparse hoppings + the 2x2 exchange block of its sites), and SLEPc
returns all 2N eigenvalues. The matrix and the EPS solver are built once and refilled per
configuration, since the sparsity pattern never changes. petsc4py/slepc4py are imported only here,
so the rest of the package never needs them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse

from slmc_hpc.errors import ConfigError
from slmc_hpc.parallel import broadcast_array, world
from slmc_hpc.systems.double_exchange.physics import DoubleExchange

#: Pauli matrices σ_x, σ_y, σ_z as [3, 2, 2]: the exchange block of site i is (J/2) S_i·σ.
PAULI = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=np.complex128)

#: Default solver: Krylov-Schur asked for all eigenvalues, with MRRR (DS method 1) for the projected
#: tridiagonal problem. Measured (PETSc -log_view, one rank): at 2N = 1152 the DS solve
#: takes 0.34 s with MRRR, 0.48 s with divide and conquer (2) and several seconds with SLEPc's
#: default QR (0); the Lanczos reorthogonalisation (~75% of the solve) is the same for all.
DEFAULT_OPTIONS = {"eps_type": "krylovschur", "ds_method": 1}


def import_slepc():
    """(PETSc, SLEPc) of a complex-scalar build, or a ConfigError saying what is missing."""
    try:
        from petsc4py import PETSc
        from slepc4py import SLEPc
    except ImportError as exc:
        raise ConfigError(
            f"evaluator.kind: slepc needs petsc4py and slepc4py built with complex scalars ({exc}); "
            "use evaluator.kind: dense or load the cluster's complex PETSc/SLEPc modules (docs/stack.md)"
        ) from exc
    if PETSc.ScalarType is not np.complex128:
        raise ConfigError(
            f"evaluator.kind: slepc needs a complex PETSc build, but PETSc.ScalarType is {PETSc.ScalarType.__name__}; "
            "put the complex petsc4py/slepc4py first on the path or set PETSC_DIR/PETSC_ARCH (docs/stack.md)"
        )
    return PETSc, SLEPc


def owned_sites(n_sites: int, size: int, rank: int) -> range:
    """Contiguous block of sites whose 2 rows each rank owns (so exchange blocks never straddle ranks)."""
    base, extra = divmod(n_sites, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def local_rows_csr(model: DoubleExchange, sites: range) -> scipy.sparse.csr_matrix:
    """Rows 2i+s (i in `sites`) of the spin-independent part of h, sparse, with every diagonal 2x2 block stored.

    Since D_n = -D_n, row i of the site hopping holds -t_n at column i+δ for every δ in D_n (aliases
    accumulate), the same matrix as `DoubleExchange.hopping_matrix` without ever forming it densely.
    Explicit zeros keep the 2x2 exchange slots in the pattern even where the hoppings vanish.
    """
    n_local = len(sites)
    local = np.arange(n_local)
    # Diagonal 2x2 blocks as explicit zeros; the hoppings below are spin diagonal.
    rows = [2 * np.repeat(local, 4) + np.tile([0, 0, 1, 1], n_local)]
    cols = [2 * np.repeat(np.arange(sites.start, sites.stop), 4) + np.tile([0, 1, 0, 1], n_local)]
    vals = [np.zeros(4 * n_local)]
    for n, t in model.hoppings.items():
        neighbours = model.lattice.neighbors(n)[sites.start : sites.stop]  # [n_local, |D_n|]
        site_rows = np.repeat(local, neighbours.shape[1])
        for s in (0, 1):
            rows.append(2 * site_rows + s)
            cols.append(2 * neighbours.ravel() + s)
            vals.append(np.full(site_rows.size, -t))
    csr = scipy.sparse.coo_matrix(
        (np.concatenate(vals).astype(np.complex128), (np.concatenate(rows), np.concatenate(cols))),
        shape=(2 * n_local, model.n_orbitals),
    ).tocsr()
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def exchange_slots(csr: scipy.sparse.csr_matrix, first_site: int) -> np.ndarray:
    """Positions in `csr.data` of the (up, up), (up, dn), (dn, up), (dn, dn) entries of every local site: [n, 2, 2]."""
    n_local, n_cols = csr.shape[0] // 2, csr.shape[1]
    # Rows ascending and columns sorted within rows: the flat keys row*n_cols + col are sorted.
    keys = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)) * n_cols + csr.indices
    local = np.arange(n_local)[:, None, None]
    a, b = np.arange(2)[None, :, None], np.arange(2)[None, None, :]
    slots = np.searchsorted(keys, (2 * local + a) * n_cols + 2 * (first_site + local) + b)
    return slots


class SlepcEvaluator:
    """All eigenvalues of h(S) by SLEPc on the ranks of `comm`; every rank gets the same result.

    Options: `eps_type`, `ds_method` (dense solver of the projected problem: 0 QR, 1 MRRR, 2 divide
    and conquer), `tol`, and `petsc_options`, any further PETSc/SLEPc options (without the leading
    dash), set through PETSc.Options under a private prefix. What the solvers keep per rank:
    - `krylovschur` (default): the Krylov basis is distributed (n^2/p), but the projected n x n
      problem is solved redundantly on every rank; its ~n allreduces per solve make it slow on
      oversubscribed cores, so give each rank its own core.
    - `scalapack`: everything distributed (block-cyclic); the one to use when n^2 no longer fits a rank.
    - `lapack`: gathers the whole matrix on every rank (a redundant dense solve; for testing).
    """

    kind = "slepc"

    def __init__(
        self,
        model: DoubleExchange,
        comm=None,
        eps_type: str = DEFAULT_OPTIONS["eps_type"],
        ds_method: int = DEFAULT_OPTIONS["ds_method"],
        tol: float = 1e-12,
        petsc_options: Mapping[str, object] | None = None,
    ):
        PETSc, SLEPc = import_slepc()
        self.model = model
        self.comm = world() if comm is None else comm
        self._petsc_comm = PETSc.Comm(self.comm)
        n = model.n_orbitals
        self.sites = owned_sites(model.n_sites, self.comm.Get_size(), self.comm.Get_rank())
        self._pattern = local_rows_csr(model, self.sites)
        self._hopping_values = self._pattern.data.copy()
        self._slots = exchange_slots(self._pattern, self.sites.start)
        self._indptr = self._pattern.indptr.astype(PETSc.IntType)
        self._indices = self._pattern.indices.astype(PETSc.IntType)

        n_local = 2 * len(self.sites)
        self.matrix = PETSc.Mat().createAIJ(((n_local, n), (n_local, n)), comm=self._petsc_comm)
        self.matrix.setPreallocationCSR((self._indptr, self._indices, self._hopping_values))
        self.matrix.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
        self.matrix.setOption(PETSc.Mat.Option.HERMITIAN, True)

        # A private prefix keeps these options away from any other PETSc object in the process.
        self._prefix = f"slmc_eval{id(self)}_"
        options = PETSc.Options(self._prefix)
        settings = {"eps_type": eps_type, "ds_method": ds_method, **dict(petsc_options or {})}
        for key, value in settings.items():
            options[key] = value
        self.eps = SLEPc.EPS().create(comm=self._petsc_comm)
        self.eps.setOptionsPrefix(self._prefix)
        self.eps.setOperators(self.matrix)
        self.eps.setProblemType(SLEPc.EPS.ProblemType.HEP)
        self.eps.setDimensions(nev=n, ncv=n, mpd=n)
        self.eps.setWhichEigenpairs(SLEPc.EPS.Which.SMALLEST_REAL)
        self.eps.setTolerances(tol=tol, max_it=100)
        self.eps.setFromOptions()
        for key in settings:
            options.delValue(key)
        self.options = settings

    def _fill(self, spins: np.ndarray) -> None:
        """Refill the matrix with h(S): hopping values plus (J/2) S_i·σ on the local sites' blocks."""
        local_spins = spins[self.sites.start : self.sites.stop]
        blocks = 0.5 * self.model.J * np.einsum("ik,kab->iab", local_spins, PAULI)
        values = self._hopping_values.copy()
        values[self._slots] += blocks
        self.matrix.setValuesCSR(self._indptr, self._indices, values)
        self.matrix.assemble()

    def eigenvalues(self, spins: np.ndarray) -> np.ndarray:
        """All 2N eigenvalues of h(S) for one configuration [N, 3], ascending, identical on every rank."""
        n = self.model.n_orbitals
        self._fill(np.asarray(spins, dtype=np.float64))
        self.eps.setOperators(self.matrix)  # resets the solver state for the new values
        self.eps.solve()
        n_converged = self.eps.getConverged()
        if n_converged < n:
            raise RuntimeError(
                f"SLEPc ({self.options}) converged {n_converged} of {n} eigenvalues; "
                "try evaluator options eps_type: lapack or scalapack"
            )
        values = np.sort(np.array([self.eps.getEigenvalue(k).real for k in range(n)]))
        # The projected problem is solved redundantly; rank 0's copy makes the ranks agree bit for bit.
        return broadcast_array(self.comm, values)

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spins = np.asarray(spins, dtype=np.float64)
        batch = spins.reshape((-1,) + spins.shape[-2:])
        eigenvalues = np.empty((len(batch), self.model.n_orbitals))
        for b, configuration in enumerate(batch):
            eigenvalues[b] = self.eigenvalues(configuration)
        eigenvalues = eigenvalues.reshape(spins.shape[:-2] + (self.model.n_orbitals,))
        return self.model.grand_potential(eigenvalues), eigenvalues

    def close(self) -> None:
        """Free the PETSc objects now (they are freed with the evaluator otherwise)."""
        self.eps.destroy()
        self.matrix.destroy()
