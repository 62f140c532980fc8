"""The contracts between the framework and a system.

A system is a package (`slmc_hpc.systems.<kind>`) whose `SYSTEM` object declares what the framework
needs and nothing else: its configuration keys (`Schema`), what a measurement records (`Observable`),
what analysis derives from it (`Derived`), its memory needs, and `build`, which turns a validated
configuration into a `Simulation`: the exact action, the starting configurations, the steps of each
phase and the measurement. The framework (driver, step loop, run file, checkpoints, self-learning loop,
tuning, analysis, plots, resources, MPI) holds no physics.

The shapes follow Carlo.jl (a model is a handful of functions; the framework owns the context, RNG,
counters and thermalisation) and NetKet (an update returns the proposal and the log-correction that
the one exact test needs, `core.chains.OuterChain`). Optional abilities of an effective model are
protocols checked with `isinstance`, never attribute probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

    from slmc_hpc.core.chains import ChainState, StepInfo


# ------------------------------------------------------------------------------------ what is measured


@dataclass(frozen=True)
class Observable:
    """One quantity measured per configuration and chain, stored as `/samples/<name>`.

    `shape` is per configuration: () for a number, (ly, lx) for a structure factor. `unit` names the
    unit of the value ("t" for an energy in units of the hopping), "" for a pure number.
    """

    name: str
    label: str
    shape: tuple[int, ...] = ()
    unit: str = ""


@dataclass(frozen=True)
class Derived:
    """A function of means of powers of primary observables (Carlo.jl's evaluables), with a jackknife error.

    `ingredients` are (observable, power) pairs: the Binder ratio of ms is
    Derived("binder_ms", ..., (("ms", 2), ("ms", 4)), lambda a2, a4: a4 / a2**2).
    The jackknife blocks follow the τ_int of the first ingredient's observable.
    """

    name: str
    label: str
    ingredients: tuple[tuple[str, int], ...]
    function: Callable[..., Any]
    unit: str = ""


# ------------------------------------------------------------------------------------ the exact weight


@dataclass
class Evaluation:
    """The exact weight of a batch of configurations.

    `action` is the dimensionless action S (the weight is exp(-S)): Ω/T for spins, S_g - (Nf/4) log det
    M_ee for the gauge theory. `target` is what an effective model is fitted to (Ω in units of t for
    spins, S for the gauge theory). `rows` is what a chain keeps of its configuration's evaluation
    for measuring and checkpoints (eigenvalues, ...), [B, ...] each.
    """

    action: np.ndarray
    target: np.ndarray
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def select(self, mask: np.ndarray) -> Evaluation:
        return Evaluation(self.action[mask], self.target[mask], {k: v[mask] for k, v in self.rows.items()})


@runtime_checkable
class ExactAction(Protocol):
    """The exact weight: configurations [B, ...] -> Evaluation; deterministic, float64.

    `action_of(rows)` gives the action back from the rows an evaluation left (a resumed checkpoint's).
    """

    def evaluate(self, configs: np.ndarray) -> Evaluation: ...

    def action_of(self, rows: dict[str, np.ndarray]) -> np.ndarray: ...


# ------------------------------------------------------------------------------------ steps


class Stepper(Protocol):
    """One step of a rank's batch of chains (an outer step, a sweep or a trajectory), in place."""

    def step(self, state: ChainState) -> StepInfo: ...


# ------------------------------------------------------------------------------------ effective models


@runtime_checkable
class EffectiveModel(Protocol):
    """A cheap deterministic float64 energy of configurations [B, ...] -> [B], in the units of `Evaluation.target`.

    A row's energy must not depend on the other rows of the batch (bit for bit), so chain histories do
    not depend on the number of ranks. `architecture()` is what must match when a stored model is reused.
    """

    kind: str

    def energy(self, configs: np.ndarray) -> np.ndarray: ...

    def parameters(self) -> dict[str, np.ndarray]: ...

    def set_parameters(self, parameters: dict[str, np.ndarray]) -> None: ...

    def n_parameters(self) -> int: ...

    def architecture(self) -> dict[str, Any]: ...


@runtime_checkable
class LocalDelta(Protocol):
    """A model whose energy change for one local move is cheap (single-site Metropolis inner chains)."""

    def delta_energy(
        self, configs: np.ndarray, sites: np.ndarray, new_values: np.ndarray, energy: np.ndarray | None = None
    ) -> np.ndarray: ...


@runtime_checkable
class CompiledChain(Protocol):
    """A model that runs a whole Metropolis chain under exp(-H/T) in compiled code."""

    def metropolis_chain(
        self, configs: np.ndarray, sites, values, uniforms, temperature: float, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class LinearReadout(Protocol):
    """A model whose energy is features @ coefficients: the coefficients are solved by least squares."""

    n_readout: int

    def features(self, configs: np.ndarray) -> np.ndarray: ...

    def set_readout(self, constant: float, coefficients: np.ndarray) -> None: ...


@runtime_checkable
class Trainable(Protocol):
    """A model with parameters trained by gradient steps on a torch module (`GRADIENT_PARAMETERS` of it)."""

    GRADIENT_PARAMETERS: tuple[str, ...]

    def torch_module(self) -> torch.nn.Module: ...


@runtime_checkable
class Chunked(Protocol):
    """A model whose energy of a whole data set must be taken in chunks (memory per configuration)."""

    def energy_chunked(self, configs: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class NestedProposal(Protocol):
    """A model with a cheaper proposal model of its own, refitted to it after every training round."""

    proposal: Any

    def new_proposal(self) -> Any: ...

    def fit_proposal(self, configs: np.ndarray, comm=None, energy=None, features=None) -> float: ...


@runtime_checkable
class Force(Protocol):
    """A model (or exact action) whose gradient drives molecular dynamics: (energy [B], force [B, ...])."""

    def force(self, configs: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


# ------------------------------------------------------------------------------------ the system


@dataclass(frozen=True)
class Schema:
    """A system's configuration keys: the commented defaults (every section, every key) and one rule per key.

    `rules[section][key](path, value)` converts and checks a value (raising ConfigError naming the key);
    keys the framework owns (output, seed, sampler.measurements, ...) have the framework's rules and need
    none here. `check(config)` checks rules that involve several keys.
    """

    defaults_yaml: str
    rules: Mapping[str, Mapping[str, Callable[[str, Any], Any]]]
    check: Callable[[Any], None] = lambda config: None
    #: Per `evaluator.kind`, the settings `evaluator.options` may hold, each with its rule.
    evaluator_options: Mapping[str, Mapping[str, Callable[[str, Any], Any]]] = field(default_factory=dict)
    #: Dotted keys that take a list although their default is not one (`effective.loops: auto`): a list given for
    #: them is one value, not a scan (keys whose default is a list are such keys already).
    list_keys: frozenset[str] = frozenset()


@dataclass
class LearningPlan:
    """What the self-learning loop needs of a system (`core.learning.SelfLearning`).

    `round_stepper(effective)` samples within a round with the current model; `warmup_stepper()` runs
    exact steps whose configurations become data (None: none); `loss_scale` normalises the residual
    ((target - H_eff)/scale)²; `config_shape` and `dtype` are one configuration's (training data);
    `trivial(effective)` is True while the model proposes configurations
    that carry no weight (they give the first fit only); `refit_proposal` refits a `NestedProposal`.
    `training_rows(info)` turns a step's exactly evaluated configurations into data rows of `config_shape`
    (None: the configurations themselves); a target that depends on more than the configuration (the gauge
    theory's pseudofermion action depends on the trajectory's phi) needs that more in its row.
    """

    round_stepper: Callable[[EffectiveModel], Stepper]
    loss_scale: float
    config_shape: tuple[int, ...]
    dtype: Any = np.float64
    warmup_stepper: Callable[[], Stepper] | None = None
    trivial: Callable[[EffectiveModel], bool] = lambda effective: False
    training_rows: Callable[[StepInfo], np.ndarray] | None = None


@dataclass
class Tuned:
    """Settings chosen by measurement before production (and recorded: checkpoint counters, run.h5 attrs)."""

    settings: dict[str, Any]
    report: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


class Simulation(Protocol):
    """A system built for one job on one rank: what the driver calls, phase by phase.

    `learns`: the run has warmup, train and freeze phases (an effective model is trained, then frozen);
    `settings`: the production update's settings ("auto" until `tune` fixes them).
    """

    action: ExactAction
    effective: EffectiveModel | None
    learns: bool
    settings: dict[str, Any]

    def initial_configurations(self, rngs: list[np.random.Generator]) -> np.ndarray: ...

    def check_configurations(self, configs: np.ndarray, source: str) -> None: ...

    def measure(self, state: ChainState) -> dict[str, np.ndarray]: ...

    def stepper(self) -> Stepper: ...

    def learning(self) -> LearningPlan: ...

    def tune(self, state: ChainState, comm) -> Tuned | None: ...


@dataclass(frozen=True)
class Grouping:
    """How many ranks share one exact evaluation (their chains are identical; only the first writes them).

    `split`: each group gets its own communicator; `key`: the configuration key that sets `ranks` (messages).
    """

    ranks: int = 1
    split: bool = False
    key: str = ""


class FieldView(Protocol):
    """How analysis and plots present a field observable (shape != ()) from its per-chain means [C, *shape]:
    lines printed after the results table, CSV files and PNG figures written into a directory (their paths)."""

    def lines(self, chain_means: np.ndarray, format_value: Callable[[float, float | None], str]) -> list[str]: ...

    def write_csv(self, chain_means: np.ndarray, directory) -> list: ...

    def plot(self, chain_means: np.ndarray, title: str, directory, linear: bool = False) -> list: ...


class System(Protocol):
    """A physical system as the framework sees it (one object per package: `slmc_hpc.systems.<kind>.SYSTEM`).

    `phases(config)`: the driver's phases this job runs, in order (warmup, train, freeze, tune,
    thermalize, production); `learns(config)`: whether an effective model is trained (training data
    are kept); `describe(config)`: one line that tells this run's figures from another's;
    `parameters(config)`: the physical point as a few named values (tables of many runs);
    `step_name(config)`: what one step is ("sweeps", "outer steps", "trajectories"); `warnings(config)`: what
    a valid job should still be told (printed by rank 0 at the start).
    """

    kind: str
    #: The name of the configuration rows in checkpoints (`spins`, `links`): the state's `config`.
    config_name: str
    schema: Schema

    def observables(self, config) -> tuple[Observable, ...]: ...

    def derived(self, config) -> tuple[Derived, ...]: ...

    def field_views(self, config) -> dict[str, FieldView]: ...

    def phases(self, config) -> tuple[str, ...]: ...

    def learns(self, config) -> bool: ...

    def grouping(self, config) -> Grouping: ...

    def describe(self, config) -> str: ...

    def step_name(self, config) -> str: ...

    def parameters(self, config) -> dict[str, Any]: ...

    def warnings(self, config) -> list[str]: ...

    def configuration_bytes(self, config) -> float: ...

    def state_bytes(self, config) -> float: ...

    def memory_terms(self, config) -> dict[str, float]: ...

    def build(self, config, group_comm=None) -> Simulation: ...
