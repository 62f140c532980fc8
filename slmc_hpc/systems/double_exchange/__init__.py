"""The 2D double-exchange (classical Kondo lattice) model: Heisenberg spins coupled to electrons.

Exact weight exp(-Ω/T) from a diagonalisation of the 2N x 2N one-body matrix (`physics`, `evaluators`);
effective models: the linear Heisenberg model and the O(3)-equivariant transformer (`effective`);
updates: exact local MC and SLMC (`samplers`). `SYSTEM` is what the framework sees.

>>> from slmc_hpc.systems.double_exchange.physics import DoubleExchange
>>> model = DoubleExchange(lx=6, ly=6, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.05)
"""

from __future__ import annotations

from slmc_hpc.core.protocols import Derived, Grouping, Observable
from slmc_hpc.systems.double_exchange.schema import SCHEMA

#: Bytes of LAPACK's work space and copies per dense h(S), relative to the matrix (measured: lx=2000, ly=4
#: needs > 23 GiB).
DENSE_FACTOR = 1.25
#: Samplers that train an effective model, and those whose steps are MD trajectories.
SELF_LEARNING = ("slmc", "slhmc")
TRAJECTORIES = ("hmc", "slhmc")


class DoubleExchangeSystem:
    """The framework's view of the double-exchange model (`core.protocols.System`)."""

    kind = "double_exchange"
    config_name = "spins"
    schema = SCHEMA

    def observables(self, config) -> tuple[Observable, ...]:
        m = config.model
        return (
            Observable("omega", r"$\Omega/N$", unit="t"),
            Observable("m", r"$m$"),
            Observable("ms", r"$m_s$"),
            Observable("nn", r"$\langle S_i\cdot S_{i+\delta}\rangle$"),
            Observable("density", r"$n$"),
            Observable("electron_energy", r"$E_{el}/N$", unit="t"),
            Observable("sq", r"$S(q)$", shape=(m.ly, m.lx)),
            *((Observable("dH", r"$\Delta H$ of the trajectory"),) if config.sampler.kind in TRAJECTORIES else ()),
        )

    def derived(self, config) -> tuple[Derived, ...]:
        """The Binder ratio of ms, the susceptibilities N(<x²> - <x>²)/T of ms and m, and the specific heat from
        the fluctuations of Ω, N(<ω²> - <ω>²)/T² per site (ω = Ω/N; the fluctuation formula for a T-independent
        energy: Ω itself depends on T, so this is the spins' energy variance in units of T², not dE/dT)."""
        n_sites, temperature = config.model.lx * config.model.ly, config.model.T
        scale, heat = n_sites / temperature, n_sites / temperature**2
        return (
            Derived("binder_ms", r"$\langle m_s^4\rangle/\langle m_s^2\rangle^2$", (("ms", 2), ("ms", 4)), _binder),
            Derived("chi_ms", r"$\chi_s$", (("ms", 1), ("ms", 2)), lambda a, a2: scale * (a2 - a**2), unit="1/t"),
            Derived("chi_m", r"$\chi$", (("m", 1), ("m", 2)), lambda a, a2: scale * (a2 - a**2), unit="1/t"),
            Derived(
                "specific_heat",
                r"$N(\langle\omega^2\rangle - \langle\omega\rangle^2)/T^2$",
                (("omega", 1), ("omega", 2)),
                lambda a, a2: heat * (a2 - a**2),
            ),
        )

    def field_views(self, config) -> dict:
        from slmc_hpc.systems.double_exchange.structure_factor import StructureFactorView

        return {"sq": StructureFactorView()}

    def phases(self, config) -> tuple[str, ...]:
        kind = config.sampler.kind
        if kind == "exact":
            return ("thermalize", "production")
        if kind == "hmc":
            return ("tune", "thermalize", "production")
        if config.effective.load is not None:
            return ("freeze", "tune", "thermalize", "production")
        return ("warmup", "train", "freeze", "tune", "thermalize", "production")

    def learns(self, config) -> bool:
        return config.sampler.kind in SELF_LEARNING and config.effective.load is None

    def grouping(self, config) -> Grouping:
        """slepc: `ranks_per_config` ranks share one diagonalisation (each group with its own communicator)."""
        if config.evaluator.kind != "slepc":
            return Grouping()
        return Grouping(config.evaluator.ranks_per_config, split=True, key="evaluator.ranks_per_config")

    def describe(self, config) -> str:
        """'6×6, T = 0.05, J = 1, μ = 0, t1 = 1, slmc sampler, transformer H_eff': what tells runs apart."""
        m, kind = config.model, config.sampler.kind
        effective = f"{config.effective.kind} H_eff" if kind in SELF_LEARNING else "no H_eff"
        hoppings = ", ".join(f"t{n} = {t:g}" for n, t in m.hoppings.items())
        return f"{m.lx}×{m.ly}, T = {m.T:g}, J = {m.J:g}, μ = {m.mu:g}, {hoppings}, {kind} sampler, {effective}"

    def step_name(self, config) -> str:
        return {"exact": "sweeps", "slmc": "outer steps"}.get(config.sampler.kind, "trajectories")

    def warnings(self, config) -> list[str]:
        m = config.model
        odd = [f"model.{key} = {getattr(m, key)}" for key in ("lx", "ly") if getattr(m, key) % 2]
        if not odd:
            return []
        return [
            f"{' and '.join(odd)} is odd: the staggered magnetisation ms and the Néel momentum (π, π) are not "
            "defined on this lattice (ms, its Binder ratio and susceptibility mean nothing here)"
        ]

    def parameters(self, config) -> dict:
        """The physical point, for tables of many runs."""
        m = config.model
        return {"L": f"{m.lx}x{m.ly}", "T": m.T, "J": m.J, "mu": m.mu}

    # -- resources ---------------------------------------------------------------------------------
    def configuration_bytes(self, config) -> float:
        """One configuration and its target (training data)."""
        return 8.0 * (3 * config.model.lx * config.model.ly + 1)

    def state_bytes(self, config) -> float:
        """One chain in a checkpoint: spins, eigenvalues, Ω and the window's acceptance."""
        n_sites = config.model.lx * config.model.ly
        return 8.0 * (3 * n_sites + 2 * n_sites + 2)

    def memory_terms(self, config) -> dict[str, float]:
        """Bytes per rank of the big arrays: the batch of dense h(S) (or slepc's share), spins, attention."""
        n_sites = config.model.lx * config.model.ly
        n_orbitals = 2 * n_sites
        batch = config.sampler.chains_per_rank
        matrix = 16.0 * n_orbitals**2
        terms = {}
        if config.evaluator.kind == "slepc":
            terms["distributed h(S)"] = 3 * matrix / config.evaluator.ranks_per_config + matrix  # + hoppings
        else:  # dense (and the host side of cupy): the batch of h(S), the hopping matrix, LAPACK's copy and work
            terms["dense h(S) matrices"] = DENSE_FACTOR * (batch + 4) * matrix
        terms["spins and eigenvalues"] = 8.0 * batch * (4 * 3 * n_sites + 3 * n_orbitals)
        if config.sampler.kind in SELF_LEARNING and config.effective.kind == "transformer":
            e = config.effective
            attention = 8.0 * n_sites**2
            training_batch = config.training.batch_size if self.learns(config) else 0
            forward = 3 if config.sampler.kind == "slmc" else 6  # slhmc's forces keep the forward pass for backward
            per_layer = forward * batch + 6 * training_batch
            dense_tables = sum(int(v) for v in (e.n_att, e.n_J) if isinstance(v, int))  # `auto` read-outs are sparse
            terms["transformer attention"] = attention * (1 + dense_tables + int(e.n_layers) * per_layer)
        return terms

    def build(self, config, group_comm=None):
        from slmc_hpc.systems.double_exchange.simulation import DoubleExchangeSimulation

        return DoubleExchangeSimulation(config, group_comm)


def _binder(a2, a4):
    return a4 / a2**2


SYSTEM = DoubleExchangeSystem()
