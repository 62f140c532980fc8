"""Run under `mpirun -n 2 python -m mpi4py`: the slepc evaluator on a 2-rank communicator agrees with dense.

Checks, for random configurations at 6x6 and 16x16 (incl. J < 0 and further hoppings), that Ω and
the eigenvalues agree with the dense evaluator to 1e-10 relative and that every rank of the
communicator got bit-for-bit the same result. Exits non-zero (mpi4py aborts all ranks) on failure.
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.parallel import world
from slmc_hpc.systems.double_exchange.evaluators import make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins

CASES = [
    # (lx, ly, hoppings, J, mu, T, configurations)
    (6, 6, {1: 1.0}, 1.0, 0.0, 0.05, 3),
    (6, 6, {1: 1.0, 2: -0.3, 3: 0.1}, -2.0, 0.3, 0.1, 2),
    (16, 16, {1: 1.0, 2: 0.2}, 1.5, -0.5, 0.05, 2),
    (16, 16, {1: 1.0}, -1.0, 0.0, 0.02, 1),
    (5, 3, {1: 1.0, 2: 0.5}, 3.0, 0.2, 0.1, 2),  # odd site count: the ranks own unequal blocks
]


def check_case(comm, lx: int, ly: int, hoppings: dict, J: float, mu: float, T: float, count: int) -> str:
    model = DoubleExchange(lx, ly, hoppings, J=J, mu=mu, T=T)
    spins = random_spins(np.random.default_rng(1000 + lx * ly), (count, model.n_sites))
    slepc = make_evaluator("slepc", model, comm=comm)
    omega, eigenvalues = slepc.omega(spins)
    expected_omega, expected_eigenvalues = make_evaluator("dense", model).omega(spins)
    scale = np.max(np.abs(expected_eigenvalues))
    omega_error = np.max(np.abs(omega - expected_omega) / np.abs(expected_omega))
    eig_error = np.max(np.abs(eigenvalues - expected_eigenvalues)) / scale
    assert eigenvalues.shape == (count, model.n_orbitals), eigenvalues.shape
    assert omega_error < 1e-10, f"{lx}x{ly} J={J}: Ω differs from dense by {omega_error:.2e} (relative)"
    assert eig_error < 1e-10, f"{lx}x{ly} J={J}: eigenvalues differ from dense by {eig_error:.2e} (relative)"
    # Every rank of the communicator must hold bit-for-bit the same answer.
    copies = comm.allgather((omega.tobytes(), eigenvalues.tobytes()))
    assert all(c == copies[0] for c in copies), f"{lx}x{ly}: ranks disagree"
    slepc.close()
    return f"{lx}x{ly} t={hoppings} J={J}: |ΔΩ/Ω| = {omega_error:.1e}, |ΔE|/max|E| = {eig_error:.1e}"


def main() -> None:
    comm = world()
    assert comm.Get_size() >= 2, "run with mpirun -n 2 (or more)"
    for case in CASES:
        line = check_case(comm, *case)
        if comm.Get_rank() == 0:
            print(line, flush=True)
    # Sub-communicators (ranks_per_config = 1): each group solves on its own, concurrently.
    single = comm.Split(color=comm.Get_rank(), key=0)
    check_case(single, *CASES[1])
    single.Free()
    if comm.Get_rank() == 0:
        print(f"evaluator_agreement: ok on {comm.Get_size()} ranks", flush=True)


if __name__ == "__main__":
    main()
