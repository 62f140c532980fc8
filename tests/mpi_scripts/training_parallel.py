"""Run under `mpirun -n 2`: data-parallel training equals training on the union of the ranks' data.

Checks: the allreduced gradient equals the one-rank gradient of the union (1e-12); after a few
AdamW steps every rank holds bitwise identical parameters and the same loss history; fit_linear
on two ranks equals the one-rank fit of the union. Exits non-zero (mpi4py aborts) on failure.
"""

from types import SimpleNamespace

import numpy as np
import torch
from mpi4py import MPI

from slmc_hpc.core.learning import Trainer, fit_linear
from slmc_hpc.systems.double_exchange.effective import make_effective
from slmc_hpc.systems.double_exchange.lattice import Lattice
from slmc_hpc.systems.double_exchange.physics import random_spins

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
assert comm.Get_size() == 2

lattice = Lattice(4, 4)
architecture = SimpleNamespace(kind="transformer", n_J=2, n_layers=1, n_att=2, load=None)
training = SimpleNamespace(batch_size=4, lr=1e-2, weight_decay=1e-4)
rng = np.random.default_rng(11)
spins = random_spins(rng, (13, lattice.n_sites))
omega = rng.normal(-20.0, 1.0, 13)
mine = slice(0, 5) if rank == 0 else slice(5, 13)  # unequal shares on purpose


def fresh_model():
    model = make_effective(architecture, lattice)
    parameters = model.parameters()
    parameters["attention"] = np.random.default_rng(12).normal(scale=0.5, size=parameters["attention"].shape)
    model.set_parameters({**parameters, "e0": np.array(-20.0), "couplings": np.array([0.3, -0.1])})
    return model


# 1. The allreduced gradient is the gradient of the union.
loss, gradient = Trainer(fresh_model(), training, lattice.n_sites, comm=comm).gradient(spins[mine], omega[mine])
loss_one, gradient_one = Trainer(fresh_model(), training, lattice.n_sites).gradient(spins, omega)
assert abs(loss - loss_one) <= 1e-12 * abs(loss_one), (loss, loss_one)
for name in gradient:
    assert np.allclose(gradient[name], gradient_one[name], rtol=0, atol=1e-12), name

# 2. Training steps leave every rank with bitwise identical parameters and the same (global) losses.
model = fresh_model()
trainer = Trainer(model, training, lattice.n_sites, comm=comm, seed=5)
losses = np.concatenate([trainer.train(spins[mine], omega[mine], 3), trainer.train(spins[mine], omega[mine], 2)])
assert np.all(np.isfinite(losses)) and trainer.step_count == 5
gathered = comm.allgather((model.parameters(), losses))
for name, value in gathered[0][0].items():
    assert np.array_equal(value, gathered[1][0][name]), name
assert np.array_equal(gathered[0][1], gathered[1][1])
assert not np.array_equal(model.parameters()["attention"], fresh_model().parameters()["attention"])

# 3. The linear fit over two ranks equals the fit of the union on one rank.
linear = SimpleNamespace(kind="linear", n_J=3, n_layers=0, n_att=0, load=None)
split, whole = make_effective(linear, lattice), make_effective(linear, lattice)
loss_split = fit_linear(split, spins[mine], omega[mine], comm=comm, scale=lattice.n_sites)
loss_whole = fit_linear(whole, spins, omega, scale=lattice.n_sites)
for name, value in whole.parameters().items():
    assert np.allclose(split.parameters()[name], value, rtol=1e-12, atol=1e-12), name
assert abs(loss_split - loss_whole) <= 1e-12 * loss_whole

if rank == 0:
    print("training_parallel OK")
