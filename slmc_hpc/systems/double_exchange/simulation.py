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
#: Exact HMC with `trajectory_length: auto`, and the first step size `md_steps: auto` tries. Length 1.5 measured
#: best at L = 12 and 16 (`make bench-scale`, md_steps for acceptance 0.8: ESS/s of ms 1.9x and 1.2x length 1,
#: 1.3x length 2 at both); at L = 8 length 1 is 1.4x better.
HMC_TRAJECTORY_LENGTH, HMC_FIRST_STEP = 1.5, 0.2
#: Samplers that train an effective model (their training rounds are SLMC rounds, whatever production runs).
SELF_LEARNING = ("slmc", "slhmc")


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
            kind,
            self.model,
            comm=group_comm if kind == "slepc" else None,
            forces=config.sampler.kind == "hmc",
            **config.evaluator.options,
        )
        self.action = SpinAction(evaluator)
        self.effective = None
        self.learns = False
        self.settings: dict = {}
        s = config.sampler
        if s.kind in SELF_LEARNING:
            from slmc_hpc.systems.double_exchange.effective.starting import loaded_model, starting_model

            build = loaded_model if config.effective.load else starting_model
            self.effective = build(config.effective, self.model, config.seed)
            self.learns = config.effective.load is None
        if s.kind == "slmc":
            self.settings = {"inner_sweeps": s.inner_sweeps, "inner_block": s.inner_block}
        elif s.kind in ("hmc", "slhmc"):
            self.settings = {"trajectory_length": s.trajectory_length, "md_steps": s.md_steps}

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
        """One sweep (exact), one outer step (slmc: frozen H_eff, the tuned inner chain) or one trajectory
        (hmc: the exact force; slhmc: H_eff's)."""
        kind = self.config.sampler.kind
        if kind == "exact":
            return ExactLocalSweep(self.action)
        if "auto" in self.settings.values():  # only before the tune phase (thermalize/production come after it)
            raise RuntimeError("the update is used before its settings were tuned")
        if kind == "slmc":
            return slmc_chain(self.action, self.effective, self.settings["inner_sweeps"], self.settings["inner_block"])
        return self.trajectory(float(self.settings["trajectory_length"]), int(self.settings["md_steps"]))

    def trajectory(self, length: float, md_steps: int):
        """HMC (exact force) or self-learning HMC (H_eff's force), both ending in the exact test with Ω/T."""
        from slmc_hpc.systems.double_exchange.hmc import EffectiveSpinForce, ExactSpinForce, hmc_chain

        if self.config.sampler.kind == "hmc":
            force = ExactSpinForce(self.action)
        else:
            force = EffectiveSpinForce(self.effective, self.model.T)
        return hmc_chain(self.action, force, self.config.sampler.integrator, md_steps, length)

    def learning(self) -> LearningPlan:
        return learning_plan(self.action, self.config.sampler.inner_sweeps, self.config.sampler.inner_block)

    def tune(self, state: ChainState, comm) -> Tuned:
        """Measure the update's `auto` settings (with the frozen H_eff) and fix them for production."""
        kind = self.config.sampler.kind
        if kind == "hmc":
            return self._tune_hmc(state, comm)
        if kind == "slhmc":
            return self._tune_slhmc(state, comm)
        return self._tune_slmc(state, comm)

    def _tune_hmc(self, state: ChainState, comm) -> Tuned:
        """Exact HMC: md_steps for the target acceptance (on thermalising trajectories) at a fixed length."""
        from slmc_hpc.core.hmc import TRAJECTORIES_PER_ROUND, tune_md_steps

        s = self.config.sampler
        length = HMC_TRAJECTORY_LENGTH if s.trajectory_length == "auto" else float(s.trajectory_length)
        md_steps, report, attrs = s.md_steps, [], {}
        if md_steps == "auto":
            first = int(np.ceil(length / HMC_FIRST_STEP))
            md_steps, rows = tune_md_steps(
                lambda n: self.trajectory(length, n), state, comm, first, s.target_acceptance
            )
            attrs["tune_trajectories"] = len(rows) * TRAJECTORIES_PER_ROUND
            report.append(f"MD steps chosen for acceptance {s.target_acceptance} ({s.integrator}):")
            report.extend(f"  md_steps {n:4d}  acceptance {a:.3f}  <dH> {v:.3g}" for n, a, v in rows)
        return self._trajectory_choice(length, int(md_steps), report, attrs)

    def _tune_slhmc(self, state: ChainState, comm) -> Tuned:
        """Self-learning HMC: trajectory length and MD steps by ESJD per second with the frozen H_eff."""
        from slmc_hpc.systems.double_exchange.samplers.tuning import tune_trajectory

        s = self.config.sampler
        report, attrs = [], {}
        if "auto" in (s.trajectory_length, s.md_steps):
            rows = []
            length, md_steps, trials = tune_trajectory(
                self.trajectory, self.action, state, s.trajectory_length, s.md_steps, comm=comm, report=rows.append
            )
            attrs["tune_trajectories"] = sum(trial.steps for trial in trials)
            report.append("trajectories measured with the frozen H_eff:")
            report.extend(f"  {trial.row()}" for trial in rows)
        else:
            length, md_steps = float(s.trajectory_length), int(s.md_steps)
        return self._trajectory_choice(length, md_steps, report, attrs)

    def _trajectory_choice(self, length: float, md_steps: int, report: list, attrs: dict) -> Tuned:
        integrator = self.config.sampler.integrator
        report.append(
            f"production trajectories: length {length:g}, md_steps {md_steps}, step size {length / md_steps:.4g} "
            f"({integrator})"
        )
        attrs.update(trajectory_length=length, md_steps=md_steps, step_size=length / md_steps, integrator=integrator)
        return Tuned({"trajectory_length": length, "md_steps": md_steps}, report, attrs)

    def _tune_slmc(self, state: ChainState, comm) -> Tuned:
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
