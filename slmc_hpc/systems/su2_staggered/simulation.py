"""SU(2) gauge theory with staggered fermions built for one job on one rank: exact and self-learning HMC.

Both are one update (`core.hmc.HMCUpdate`) ending in the one exact test (`core.chains.OuterChain`): exact HMC
integrates the exact action's force, self-learning HMC the effective action's (`effective`), and the test uses
the exact action either way (the dense log det, or the pseudofermion drawn with the true operator at the start
of the trajectory and held fixed through the MD and the test). Training trajectories (warm-up: exact HMC;
rounds: SLHMC under the current model) use a fixed step count, as md_steps is tuned only for production.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slmc_hpc.core.chains import ChainState, OuterChain
from slmc_hpc.core.hmc import TRAJECTORIES_PER_ROUND, HMCUpdate, tune_md_steps
from slmc_hpc.core.protocols import EffectiveModel, LearningPlan, Stepper, Tuned
from slmc_hpc.errors import InputError
from slmc_hpc.systems.su2_staggered import gauge
from slmc_hpc.systems.su2_staggered.actions import DenseAction, PseudofermionAction, as_links
from slmc_hpc.systems.su2_staggered.effective import LinkForce, pseudofermion_rows
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D
from slmc_hpc.systems.su2_staggered.links import haar_links, identity_links
from slmc_hpc.systems.su2_staggered.md import FIRST_STEP, LinkDynamics

#: SLHMC with md_steps auto: production trajectories take at most this many times the steps that give exact HMC
#: its first guess (a poor effective action gains nothing from ever smaller steps: its dH does not vanish).
MAX_STEP_FACTOR = 4


def build_action(config, lattice: Lattice4D):
    """The exact action of `evaluator.kind`: dense (Cholesky) or cg (pseudofermions)."""
    m = config.model
    if config.evaluator.kind == "dense":
        return DenseAction(lattice, m.beta, m.mass, m.n_flavors)
    return PseudofermionAction(lattice, m.beta, m.mass, m.n_flavors, **config.evaluator.options)


class EffectiveForce:
    """The MD force of an effective action, with the trajectory's pseudofermion where the evaluator is `cg`."""

    def __init__(self, effective: LinkForce, action):
        if not isinstance(effective, LinkForce):
            raise TypeError(f"the {type(effective).__name__} model gives no force on links")
        self.effective, self.action = effective, action

    def __call__(self, links):
        action = self.action
        if isinstance(action, PseudofermionAction) and action.n_flavors:
            return self.effective.link_force(
                links, action.phi, action.count_iterations, tol=action.tol, max_iter=action.max_iter
            )
        return self.effective.link_force(links)


class GaugeSimulation:
    """What the driver calls for the gauge theory (`core.protocols.Simulation`): exact HMC or self-learning HMC."""

    def __init__(self, config, group_comm=None):
        self.config = config
        self.lattice = Lattice4D(tuple(config.model.shape))
        self.action = build_action(config, self.lattice)
        self.dynamics = LinkDynamics(self.lattice)
        self.effective = None
        self.learns = False
        self.settings = {"md_steps": config.sampler.md_steps}
        if config.sampler.kind == "slhmc":
            from slmc_hpc.systems.su2_staggered.effective import loaded_model, starting_model

            build = loaded_model if config.effective.load else starting_model
            self.effective = build(config, self.lattice)
            self.learns = config.effective.load is None

    # -- chains ------------------------------------------------------------------------------------
    def initial_configurations(self, rngs: list[np.random.Generator]) -> np.ndarray:
        """Cold (every U = 1, nothing drawn) or hot (Haar-random links, each chain's from its own stream)."""
        if self.config.sampler.start == "hot":
            return haar_links(self.lattice, rngs).numpy()
        return identity_links(self.lattice, len(rngs)).numpy()

    def check_configurations(self, configs: np.ndarray, source: str) -> None:
        if configs.shape[1:] != (4, self.lattice.volume, 2, 2):
            raise InputError(f"{source}: its links do not fit a {list(self.lattice.shape)} lattice")

    def measure(self, state: ChainState) -> dict[str, np.ndarray]:
        """plaquette and polyakov of the links, pbp exact (dense) or from noise vectors (cg)."""
        links = as_links(state.config)
        return {
            "plaquette": gauge.plaquette(links, self.lattice).numpy(),
            "polyakov": gauge.polyakov(links, self.lattice).numpy(),
            "pbp": self.action.pbp(state),
        }

    # -- steps -------------------------------------------------------------------------------------
    def hmc(self, md_steps: int, effective: EffectiveModel | None = None) -> OuterChain:
        """A trajectory with the exact force (exact HMC) or `effective`'s (SLHMC), then the test with the exact
        action (pseudofermions drawn at the start and fixed through the trajectory and the test)."""
        s, action = self.config.sampler, self.action
        pseudofermions = isinstance(action, PseudofermionAction)
        update = HMCUpdate(
            self.dynamics,
            action.force if effective is None else EffectiveForce(effective, action),
            s.integrator,
            md_steps,
            s.trajectory_length,
            refresh=action.refresh if pseudofermions else None,
            diagnostics=action.take_iterations if pseudofermions else None,
        )
        return OuterChain(action, update, record_dh=True)

    def stepper(self) -> Stepper:
        md_steps = self.settings["md_steps"]
        if md_steps == "auto":  # only before the tune phase (thermalize/production come after it)
            raise RuntimeError("the MD step count is used before it was tuned")
        return self.hmc(int(md_steps), self.effective)

    def first_md_steps(self) -> int:
        """The step count exact HMC starts its tuning from, and every training trajectory takes."""
        s = self.config.sampler
        if s.md_steps != "auto":
            return int(s.md_steps)
        return max(1, math.ceil(s.trajectory_length / FIRST_STEP[s.integrator]))

    def learning(self) -> LearningPlan:
        """Self-learning for the gauge theory: exact HMC as warm-up, SLHMC rounds under the current model, the
        seeds' loss (S_eff - S)^2 / (2V) (a scale of sqrt(2V)); data are the link fields (complex), with `cg` each
        with its trajectory's pseudofermion (`effective.pseudofermion_rows`)."""
        if self.effective is None:
            raise TypeError("exact HMC trains no effective action")
        md_steps, volume, action = self.first_md_steps(), self.lattice.volume, self.action
        config_shape, training_rows = (4, volume, 2, 2), None
        if isinstance(action, PseudofermionAction) and action.n_flavors:
            config_shape = (16 * volume + 2 * self.lattice.half_volume,)

            def training_rows(info) -> np.ndarray:
                """A trajectory's start and end, each with the trajectory's phi (still held after its test)."""
                return pseudofermion_rows(info.proposed, torch.cat([action.phi, action.phi]))

        return LearningPlan(
            round_stepper=lambda effective: self.hmc(md_steps, effective),
            loss_scale=math.sqrt(2.0 * volume),
            config_shape=config_shape,
            dtype=np.complex128,
            warmup_stepper=lambda: self.hmc(md_steps),
            training_rows=training_rows,
        )

    def tune(self, state: ChainState, comm) -> Tuned:
        """md_steps for the target acceptance where it is `auto`; the choice is recorded either way."""
        s = self.config.sampler
        md_steps, report, attrs = self.settings["md_steps"], [], {}
        if md_steps == "auto":
            first = self.first_md_steps()
            cap = MAX_STEP_FACTOR * first if self.effective is not None else None
            md_steps, rows = tune_md_steps(
                lambda n: self.hmc(n, self.effective), state, comm, first, s.target_acceptance, max_steps=cap
            )
            attrs["tune_trajectories"] = len(rows) * TRAJECTORIES_PER_ROUND
            force = "the exact force" if self.effective is None else f"the {self.effective.kind} effective force"
            report.append(f"MD steps chosen for acceptance {s.target_acceptance} ({s.integrator}, {force}):")
            report.extend(
                f"  md_steps {n:4d}  step {s.trajectory_length / n:.4f}  acceptance {a:.3f}  <dH> {v:.3g}"
                for n, a, v in rows
            )
        md_steps = int(md_steps)
        step_size = s.trajectory_length / md_steps
        report.append(f"production trajectories: md_steps {md_steps}, step size {step_size:.4g} ({s.integrator})")
        attrs.update(md_steps=md_steps, step_size=step_size, integrator=s.integrator)
        return Tuned({"md_steps": md_steps}, report, attrs)
