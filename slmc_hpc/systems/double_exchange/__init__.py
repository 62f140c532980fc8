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
        )

    def derived(self, config) -> tuple[Derived, ...]:
        """The Binder ratio of ms and the susceptibilities N(<x²> - <x>²)/T of ms and m."""
        scale = config.model.lx * config.model.ly / config.model.T
        return (
            Derived("binder_ms", r"$\langle m_s^4\rangle/\langle m_s^2\rangle^2$", (("ms", 2), ("ms", 4)), _binder),
            Derived("chi_ms", r"$\chi_s$", (("ms", 1), ("ms", 2)), lambda a, a2: scale * (a2 - a**2), unit="1/t"),
            Derived("chi_m", r"$\chi$", (("m", 1), ("m", 2)), lambda a, a2: scale * (a2 - a**2), unit="1/t"),
        )

    def field_views(self, config) -> dict:
        from slmc_hpc.systems.double_exchange.structure_factor import StructureFactorView

        return {"sq": StructureFactorView()}

    def phases(self, config) -> tuple[str, ...]:
        if config.sampler.kind == "exact":
            return ("thermalize", "production")
        if config.effective.load is not None:
            return ("freeze", "tune", "thermalize", "production")
        return ("warmup", "train", "freeze", "tune", "thermalize", "production")

    def learns(self, config) -> bool:
        return config.sampler.kind == "slmc" and config.effective.load is None

    def grouping(self, config) -> Grouping:
        """slepc: `ranks_per_config` ranks share one diagonalisation (each group with its own communicator)."""
        if config.evaluator.kind != "slepc":
            return Grouping()
        return Grouping(config.evaluator.ranks_per_config, split=True, key="evaluator.ranks_per_config")

    def describe(self, config) -> str:
        """'6×6, T = 0.05, J = 1, μ = 0, t1 = 1, slmc sampler, transformer H_eff': what tells runs apart."""
        m, kind = config.model, config.sampler.kind
        effective = "no H_eff" if kind == "exact" else f"{config.effective.kind} H_eff"
        hoppings = ", ".join(f"t{n} = {t:g}" for n, t in m.hoppings.items())
        return f"{m.lx}×{m.ly}, T = {m.T:g}, J = {m.J:g}, μ = {m.mu:g}, {hoppings}, {kind} sampler, {effective}"

    def step_name(self, config) -> str:
        return "sweeps" if config.sampler.kind == "exact" else "outer steps"

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
        if config.sampler.kind == "slmc" and config.effective.kind == "transformer":
            e = config.effective
            attention = 8.0 * n_sites**2
            training_batch = config.training.batch_size if self.learns(config) else 0
            per_layer = 3 * batch + 6 * training_batch
            dense_tables = sum(int(v) for v in (e.n_att, e.n_J) if isinstance(v, int))  # `auto` read-outs are sparse
            terms["transformer attention"] = attention * (1 + dense_tables + int(e.n_layers) * per_layer)
        return terms

    def build(self, config, group_comm=None):
        from slmc_hpc.systems.double_exchange.simulation import DoubleExchangeSimulation

        return DoubleExchangeSimulation(config, group_comm)


def _binder(a2, a4):
    return a4 / a2**2


SYSTEM = DoubleExchangeSystem()
