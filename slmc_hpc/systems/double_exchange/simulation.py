"""The double-exchange model built for one job on one rank: exact action, chains' start, updates, measurement."""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.chains import ChainState
from slmc_hpc.core.protocols import LearningPlan, Stepper, Tuned
from slmc_hpc.errors import InputError
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins
from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, measure, slmc_chain
from slmc_hpc.systems.double_exchange.samplers.slmc import inner_mode

#: Inner chain of the training rounds where the sampler's is `auto` (tuned only after training):
#: 4 sweeps decorrelate the proposals from the chain they start from; sub-chains of N/2 moves.
TRAINING_INNER_SWEEPS = 4


def build_model(config) -> DoubleExchange:
    m = config.model
    return DoubleExchange(lx=m.lx, ly=m.ly, hoppings=m.hoppings, J=m.J, mu=m.mu, T=m.T)


def training_inner_chain(inner_sweeps, inner_block, n_sites: int) -> tuple[int, int]:
    """(inner sweeps, inner block) of the training rounds for the sampler's settings (`auto` allowed)."""
    sweeps = TRAINING_INNER_SWEEPS if inner_sweeps == "auto" else int(inner_sweeps)
    block = max(1, n_sites // 2) if inner_block == "auto" else int(inner_block)
    return sweeps, block


def learning_plan(action, inner_sweeps="auto", inner_block="auto") -> LearningPlan:
    """Self-learning for spins: rounds of SLMC under the current H_eff (training inner chain for `auto`
    settings), exact local sweeps as warm-up, the loss per site, and H_eff = 0 as the trivial model."""
    n_sites = action.model.n_sites
    sweeps, block = training_inner_chain(inner_sweeps, inner_block, n_sites)
    return LearningPlan(
        round_stepper=lambda effective: slmc_chain(action, effective, sweeps, block),
        loss_scale=float(n_sites),
        config_shape=(n_sites, 3),
        warmup_stepper=lambda: ExactLocalSweep(action),
        # H_eff = 0 (no coupling fitted yet): the proposals are uniform on the spheres.
        trivial=lambda effective: not np.any(effective.parameters()["couplings"]),
    )


class DoubleExchangeSimulation:
    """What the driver calls for the double-exchange model (`core.protocols.Simulation`)."""

    def __init__(self, config, group_comm=None):
        self.config = config
        self.model = build_model(config)
        kind = config.evaluator.kind
        evaluator = make_evaluator(
            kind, self.model, comm=group_comm if kind == "slepc" else None, **config.evaluator.options
        )
        self.action = SpinAction(evaluator)
        self.effective = None
        self.learns = False
        self.settings: dict = {}
        if config.sampler.kind == "slmc":
            from slmc_hpc.systems.double_exchange.effective.starting import loaded_model, starting_model

            build = loaded_model if config.effective.load else starting_model
            self.effective = build(config.effective, self.model, config.seed)
            self.learns = config.effective.load is None
            self.settings = {"inner_sweeps": config.sampler.inner_sweeps, "inner_block": config.sampler.inner_block}

    # -- chains ------------------------------------------------------------------------------------
    def initial_configurations(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """Uniform random spins, each chain's drawn first from its own stream."""
        return np.stack([random_spins(rng, (self.model.n_sites,)) for rng in rngs])

    def check_configurations(self, configs: np.ndarray, source: str) -> None:
        if configs.ndim != 3 or configs.shape[1:] != (self.model.n_sites, 3):
            raise InputError(f"{source}: its spins do not fit a {self.model.lattice} lattice")

    def measure(self, state: ChainState) -> dict[str, np.ndarray]:
        """Observables of the current configurations, from the cached eigenvalues."""
        return measure(self.action, state)

    # -- steps -------------------------------------------------------------------------------------
    def stepper(self) -> Stepper:
        """One sweep (exact) or one outer step (slmc, frozen H_eff, the tuned inner chain)."""
        if self.config.sampler.kind == "exact":
            return ExactLocalSweep(self.action)
        if "auto" in self.settings.values():  # only before the tune phase (thermalize/production come after it)
            raise RuntimeError("the inner chain is used before it was tuned")
        return slmc_chain(self.action, self.effective, self.settings["inner_sweeps"], self.settings["inner_block"])

    def learning(self) -> LearningPlan:
        return learning_plan(self.action, self.config.sampler.inner_sweeps, self.config.sampler.inner_block)

    def tune(self, state: ChainState, comm) -> Tuned:
        """Measure the inner chain where it is `auto` with the frozen H_eff, and fix it for production."""
        from slmc_hpc.systems.double_exchange.samplers.tuning import tune_inner_chain

        sweeps, block = self.settings["inner_sweeps"], self.settings["inner_block"]
        report, attrs = [], {}
        if "auto" in (sweeps, block):
            rows = []
            sweeps, block, trials = tune_inner_chain(
                self.action, self.effective, state, sweeps, block, comm=comm, report=rows.append
            )
            attrs["tune_outer_steps"] = sum(trial.steps for trial in trials)
            report.append("inner chain measured with the frozen H_eff:")
            report.extend(f"  {trial.row()}" for trial in rows)
        sweeps, block = int(sweeps), int(block)
        mode = inner_mode(self.effective, block)
        report.append(f"production inner chain: inner_sweeps {sweeps}, inner_block {block} ({mode})")
        attrs.update(inner_sweeps=sweeps, inner_block=block, inner_mode=mode)
        return Tuned({"inner_sweeps": sweeps, "inner_block": block}, report, attrs)
