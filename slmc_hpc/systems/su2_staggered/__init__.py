"""SU(2) lattice gauge theory with dynamical staggered fermions (`model.kind: su2_staggered`).

The physics modules are pure torch functions on batched link fields [B, 4, V, 2, 2] (B independent
chains), with no MPI, no files and no configuration: `lattice` (sites, neighbours, phases), `links`
(SU(2), su(2), momenta, gauge transformations), `gauge` (Wilson action, plaquette, Polyakov loop, gauge
force), `staggered` (D_eo, M_ee, dense log det and force, CG, pseudofermions, pbp). `actions` puts them
together as the two exact evaluators, `md` is the molecular dynamics on links, `loops` and `smearing` are the
loop classes and the gauge-covariant networks, `effective` the effective actions of self-learning HMC built from
them, `simulation` the exact and self-learning HMC of a job; `SYSTEM` is what the framework sees.
"""

from __future__ import annotations

import math

from slmc_hpc.core.protocols import Derived, Grouping, Observable
from slmc_hpc.systems.su2_staggered.schema import SCHEMA

#: Dense matrices of the dense evaluator per chain, relative to one M_ee: M_ee, its Cholesky factor, M_ee^-1
#: and the work of the force's contractions (measured at 8^4 with 2 chains: 1.4 GB in all).
DENSE_MATRICES = 5


class SU2StaggeredSystem:
    """The framework's view of the gauge theory (`core.protocols.System`)."""

    kind = "su2_staggered"
    config_name = "links"
    schema = SCHEMA

    def observables(self, config) -> tuple[Observable, ...]:
        observables = (
            Observable("plaquette", r"plaquette $\langle \frac{1}{2}\mathrm{Re\,tr}\,U_{\mu\nu}\rangle$"),
            Observable("polyakov", r"Polyakov loop $\langle \frac{1}{2}\mathrm{Re\,tr}\,L\rangle$"),
            Observable("pbp", r"$\langle\bar\psi\psi\rangle$"),
            Observable("dH", r"$\Delta H$ of the trajectory"),
        )
        if config.evaluator.kind == "cg":
            observables += (Observable("cg_iterations", "CG iterations per solve"),)
        return observables

    def derived(self, config) -> tuple[Derived, ...]:
        return ()

    def field_views(self, config) -> dict:
        return {}

    def phases(self, config) -> tuple[str, ...]:
        if config.sampler.kind == "hmc":
            return ("tune", "thermalize", "production")
        if config.effective.load is not None:
            return ("freeze", "tune", "thermalize", "production")
        return ("warmup", "train", "freeze", "tune", "thermalize", "production")

    def learns(self, config) -> bool:
        return config.sampler.kind == "slhmc" and config.effective.load is None

    def grouping(self, config) -> Grouping:
        return Grouping()

    def describe(self, config) -> str:
        """'4^4, β = 2.7, m = 0.3, Nf = 4, hmc (dense, omelyan)': what tells one run's figures from another's."""
        m, s = config.model, config.sampler
        shape = f"{m.shape[0]}^4" if len(set(m.shape)) == 1 else "×".join(str(x) for x in m.shape)
        method = f"{s.kind} ({config.evaluator.kind}, {s.integrator})"
        if s.kind == "slhmc":
            e = config.effective
            layers = "" if e.kind == "loops" else f", {e.n_layers} layers, m_eff = {e.mass:g}"
            method += f" with {e.kind} S_eff{layers}"
        return f"{shape}, β = {m.beta:g}, m = {m.mass:g}, Nf = {m.n_flavors}, {method}"

    def step_name(self, config) -> str:
        return "trajectories"

    def warnings(self, config) -> list[str]:
        return []

    def parameters(self, config) -> dict:
        m = config.model
        return {"L": "x".join(str(x) for x in m.shape), "beta": m.beta, "mass": m.mass, "n_flavors": m.n_flavors}

    # -- resources ---------------------------------------------------------------------------------
    def _volume(self, config) -> int:
        return math.prod(config.model.shape)

    def configuration_bytes(self, config) -> float:
        """One link field (complex 2x2 per link) and its target."""
        return 16.0 * 4 * 4 * self._volume(config) + 8.0

    def state_bytes(self, config) -> float:
        return self.configuration_bytes(config) + 8.0 * 4

    def memory_terms(self, config) -> dict[str, float]:
        volume, batch = self._volume(config), config.sampler.chains_per_rank
        links = 16.0 * 4 * 4 * volume
        terms = {"links, momenta and forces": 8.0 * batch * links}
        if config.evaluator.kind == "dense" and config.model.n_flavors:
            matrix = 16.0 * volume**2  # M_ee is (2 V/2)^2 complex
            terms["dense M_ee matrices"] = DENSE_MATRICES * batch * matrix
        elif config.model.n_flavors:
            terms["CG vectors"] = 16.0 * 8 * batch * volume * 2
        return terms

    def build(self, config, group_comm=None):
        from slmc_hpc.systems.su2_staggered.simulation import GaugeSimulation

        return GaugeSimulation(config, group_comm)


SYSTEM = SU2StaggeredSystem()
