"""SU(2) gauge theory with staggered fermions built for one job on one rank: exact HMC, measurements."""

from __future__ import annotations

import math

import numpy as np

from slmc_hpc.core.chains import ChainState, OuterChain
from slmc_hpc.core.hmc import TRAJECTORIES_PER_ROUND, HMCUpdate, tune_md_steps
from slmc_hpc.core.protocols import LearningPlan, Stepper, Tuned
from slmc_hpc.errors import InputError
from slmc_hpc.systems.su2_staggered import gauge
from slmc_hpc.systems.su2_staggered.actions import DenseAction, PseudofermionAction, as_links
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D
from slmc_hpc.systems.su2_staggered.links import haar_links, identity_links
from slmc_hpc.systems.su2_staggered.md import FIRST_STEP, LinkDynamics


def build_action(config, lattice: Lattice4D):
    """The exact action of `evaluator.kind`: dense (Cholesky) or cg (pseudofermions)."""
    m = config.model
    if config.evaluator.kind == "dense":
        return DenseAction(lattice, m.beta, m.mass, m.n_flavors)
    return PseudofermionAction(lattice, m.beta, m.mass, m.n_flavors, **config.evaluator.options)


class GaugeSimulation:
    """What the driver calls for the gauge theory (`core.protocols.Simulation`): exact HMC."""

    def __init__(self, config, group_comm=None):
        self.config = config
        self.lattice = Lattice4D(tuple(config.model.shape))
        self.action = build_action(config, self.lattice)
        self.dynamics = LinkDynamics(self.lattice)
        self.effective = None
        self.learns = False
        self.settings = {"md_steps": config.sampler.md_steps}

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
    def hmc(self, md_steps: int) -> OuterChain:
        """Exact HMC: MD with the exact force, the test with the exact action (pseudofermions fixed per trajectory)."""
        s, action = self.config.sampler, self.action
        pseudofermions = isinstance(action, PseudofermionAction)
        update = HMCUpdate(
            self.dynamics,
            action.force,
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
        return self.hmc(int(md_steps))

    def learning(self) -> LearningPlan:
        raise TypeError("exact HMC trains no effective action")

    def tune(self, state: ChainState, comm) -> Tuned:
        """md_steps for the target acceptance where it is `auto`; the choice is recorded either way."""
        s = self.config.sampler
        md_steps, report, attrs = self.settings["md_steps"], [], {}
        if md_steps == "auto":
            first = max(1, math.ceil(s.trajectory_length / FIRST_STEP[s.integrator]))
            md_steps, rows = tune_md_steps(self.hmc, state, comm, first, s.target_acceptance)
            attrs["tune_trajectories"] = len(rows) * TRAJECTORIES_PER_ROUND
            report.append(f"MD steps chosen for acceptance {s.target_acceptance} ({s.integrator}):")
            report.extend(
                f"  md_steps {n:4d}  step {s.trajectory_length / n:.4f}  acceptance {a:.3f}  <dH> {v:.3g}"
                for n, a, v in rows
            )
        md_steps = int(md_steps)
        step_size = s.trajectory_length / md_steps
        report.append(f"production trajectories: md_steps {md_steps}, step size {step_size:.4g} ({s.integrator})")
        attrs.update(md_steps=md_steps, step_size=step_size, integrator=s.integrator)
        return Tuned({"md_steps": md_steps}, report, attrs)
