"""Samplers: exact local MC (the baseline) and SLMC, batched over a rank's chains."""

from slmc_hpc.samplers.chains import ChainState, StepInfo, draw_proposals, init_chains, measure, metropolis
from slmc_hpc.samplers.exact import ExactLocalSampler
from slmc_hpc.samplers.slmc import SLMCSampler

__all__ = [
    "ChainState",
    "StepInfo",
    "ExactLocalSampler",
    "SLMCSampler",
    "draw_proposals",
    "init_chains",
    "measure",
    "metropolis",
]
