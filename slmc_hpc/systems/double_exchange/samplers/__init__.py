"""Updates of the double-exchange model: exact local MC (the baseline) and SLMC, batched over a rank's chains."""

from slmc_hpc.systems.double_exchange.samplers.exact import ExactLocalSweep, draw_proposals
from slmc_hpc.systems.double_exchange.samplers.slmc import SLMCUpdate, slmc_chain

__all__ = ["ExactLocalSweep", "SLMCUpdate", "draw_proposals", "slmc_chain"]
