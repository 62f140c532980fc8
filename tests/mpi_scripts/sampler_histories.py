"""Run 4 exact-MC chains split over the ranks; rank 0 saves every chain's spins after each sweep."""

import sys

import numpy as np

from slmc_hpc.parallel import local_chains, world
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange
from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, init_chains

comm = world()
total_chains, sweeps = 4, 3
model = DoubleExchange(lx=4, ly=4, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.05)
evaluator = SpinAction(make_evaluator("dense", model))
state = init_chains(evaluator, seed=2024, chains=local_chains(total_chains // comm.size, comm.rank))
sampler = ExactLocalSweep(evaluator)
history = []
for _ in range(sweeps):
    sampler.step(state)
    history.append(state.config.copy())
local = np.stack(history, axis=1)  # [B, sweeps, N, 3]
gathered = comm.gather(local, root=0)
if comm.rank == 0:
    np.save(sys.argv[1], np.concatenate(gathered))
