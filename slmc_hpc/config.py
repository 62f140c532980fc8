"""Run configuration: YAML -> validated, frozen dataclasses (DESIGN §7).

Everything is checked before anything runs, so a typo in a job file costs seconds, not a queue
slot: each problem raises `ConfigError` with one message naming the key path, the value and what
was expected. Partial files are merged over the defaults section by section (a key that is a
mapping of its own, `model.hoppings`, is replaced as a whole). Relative paths (`output.dir`,
`effective.load`) are relative to the working directory of the run, as on a cluster job.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from slmc_hpc.errors import ConfigError

# DESIGN §7 verbatim: the embedded defaults, and the commented template that `to_yaml` fills in.
DEFAULT_YAML = """\
model:
  lx: 6
  ly: 6
  hoppings: {1: 1.0}      # t_n per neighbour shell n
  J: 1.0
  mu: 0.0
  T: 0.05
evaluator:
  kind: dense             # dense | cupy | slepc
  ranks_per_config: 1     # slepc: ranks that share one diagonalisation
  options: {}             # solver settings: slepc {eps_type, ds_method, tol, petsc_options}, cupy {device}
effective:
  kind: transformer       # linear | transformer
  n_J: auto               # shells of the Heisenberg read-out (auto: every distance shell of the lattice)
  n_layers: 2             # transformer: attention layers
  n_att: 6                # transformer: attention over shells 0..n_att
  load: null              # an earlier run's HDF5 file whose trained model to use (frozen: skips training)
  init: null              # an earlier run's HDF5 file whose model starts the training (size transfer, fine-tuned)
training:
  warmup_sweeps: 0        # exact local MC sweeps before the rounds (N diagonalisations per kept sample)
  rounds: 5               # sample-then-train rounds (the first linear_rounds fit the linear read-out only)
  linear_rounds: 2        # rounds that start from H_eff = 0 and fit only the linear read-out (bootstrap)
  outer_steps_per_round: 30
  steps_per_round: 300    # most optimizer steps per round (a round stops early on the validation loss)
  batch_size: 64
  lr: 3.0e-3              # peak learning rate; cosine decay to lr/10 within each round
  weight_decay: 1.0e-4
  max_samples: 20000      # per rank: training configurations kept (oldest dropped first)
  validation_fraction: 0.2  # of the exactly evaluated configurations, held out (never trained on)
  validate_every: 10      # optimizer steps between validation losses
  patience: 4             # validations without improvement that end a round
  precision: float32      # gradient passes: float32 (faster) or float64; H_eff itself is always float64
sampler:
  kind: slmc              # exact | slmc
  chains_per_rank: 8
  inner_sweeps: auto      # slmc: inner sweeps (N proposals each) per outer step (auto: measured, see tune)
  inner_block: auto       # slmc + transformer: moves per sub-chain under the fitted linear proposal (0: none)
  thermalization: 50      # outer steps (slmc) or sweeps (exact) before measuring
  measurements: 1000
  measure_every: 1
output:
  dir: runs/demo
  checkpoint_every: 300   # seconds
seed: 1234
"""

# Keys that may change when a run is resumed from its checkpoint (more or less production, I/O cadence).
RESUMABLE_KEYS = frozenset({"sampler.measurements", "sampler.measure_every", "output.checkpoint_every"})

EVALUATOR_KINDS = ("dense", "cupy", "slepc")
EFFECTIVE_KINDS = ("linear", "transformer")
SAMPLER_KINDS = ("exact", "slmc")


@dataclass(frozen=True)
class ModelConfig:
    lx: int
    ly: int
    hoppings: dict[int, float]
    J: float
    mu: float
    T: float


@dataclass(frozen=True)
class EvaluatorConfig:
    kind: str
    ranks_per_config: int
    options: dict[str, Any]


@dataclass(frozen=True)
class EffectiveConfig:
    kind: str
    n_J: int | str
    n_layers: int
    n_att: int
    load: str | None
    init: str | None


@dataclass(frozen=True)
class TrainingConfig:
    warmup_sweeps: int
    rounds: int
    linear_rounds: int
    outer_steps_per_round: int
    steps_per_round: int
    batch_size: int
    lr: float
    weight_decay: float
    max_samples: int
    validation_fraction: float
    validate_every: int
    patience: int
    precision: str


@dataclass(frozen=True)
class SamplerConfig:
    kind: str
    chains_per_rank: int
    inner_sweeps: int | str
    inner_block: int | str
    thermalization: int
    measurements: int
    measure_every: int


@dataclass(frozen=True)
class OutputConfig:
    dir: str
    checkpoint_every: float


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    evaluator: EvaluatorConfig
    effective: EffectiveConfig
    training: TrainingConfig
    sampler: SamplerConfig
    output: OutputConfig
    seed: int


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "evaluator": EvaluatorConfig,
    "effective": EffectiveConfig,
    "training": TrainingConfig,
    "sampler": SamplerConfig,
    "output": OutputConfig,
}


# ----------------------------------------------------------------------------------------------- values


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML (null, true, 'text', 1.5)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_show(k)}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _got(value: Any) -> str:
    return f"got {_show(value)} ({type(value).__name__})"


def _integer(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, {_got(value)}")
    return value


def _number(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number, {_got(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {_show(value)}")
    return float(value)


def _text(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, {_got(value)}")
    return value


def _optional_text(path: str, value: Any) -> str | None:
    return None if value is None else _text(path, value)


def _hoppings(path: str, value: Any) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of neighbour shell n >= 1 to t_n, e.g. {{1: 1.0}}, {_got(value)}"
        )
    out = {}
    for shell, t in value.items():
        if isinstance(shell, bool) or not isinstance(shell, int) or shell < 1:
            raise ConfigError(f"{path}: keys must be neighbour shells (integers >= 1), got key {_show(shell)}")
        out[shell] = _number(f"{path}.{shell}", t)
    return out


#: Solver settings each evaluator accepts under `evaluator.options` (passed to its constructor).
EVALUATOR_OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {}


def _evaluator_options(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of solver settings, {_got(value)}")
    return {_text(f"{path} key", key): item for key, item in value.items()}


def _petsc_options(path: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of PETSc option names to values, {_got(value)}")
    # PETSc takes option values as text; a flag without a value (null) is the empty string.
    return {_text(f"{path} key", key): "" if item is None else str(item) for key, item in value.items()}


def _choice(*options: str) -> Callable[[str, Any], str]:
    def check(path: str, value: Any) -> str:
        if _text(path, value) not in options:
            raise ConfigError(f"{path}: must be one of {' | '.join(options)}, got {_show(value)}")
        return value

    return check


def _bounded(convert: Callable[[str, Any], Any], ok: Callable[[Any], bool], expected: str):
    def check(path: str, value: Any) -> Any:
        converted = convert(path, value)
        if not ok(converted):
            raise ConfigError(f"{path}: must be {expected}, got {_show(value)}")
        return converted

    return check


def _at_least(n: int):
    return _bounded(_integer, lambda v: v >= n, f">= {n}")


AUTO = "auto"


def _auto_or(rule: Callable[[str, Any], Any], meaning: str) -> Callable[[str, Any], Any]:
    """`auto` (resolved by the run, per lattice: `meaning`) or a value that `rule` accepts."""

    def check(path: str, value: Any) -> Any:
        if value == AUTO:
            return AUTO
        try:
            return rule(path, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (or auto: {meaning})") from None

    return check


_positive_number = _bounded(_number, lambda v: v > 0, "> 0")


# One converter per key: type check, conversion (int -> float where a number is meant) and range.
RULES: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "model": {
        "lx": _at_least(2),
        "ly": _at_least(2),
        "hoppings": _hoppings,
        "J": _number,
        "mu": _number,
        "T": _bounded(_number, lambda v: v > 0, "> 0 for sampling (T = 0 is for evaluation only)"),
    },
    "evaluator": {
        "kind": _choice(*EVALUATOR_KINDS),
        "ranks_per_config": _at_least(1),
        "options": _evaluator_options,
    },
    "effective": {
        "kind": _choice(*EFFECTIVE_KINDS),
        "n_J": _auto_or(_at_least(1), "every distance shell of the lattice"),
        "n_layers": _at_least(0),
        "n_att": _at_least(0),
        "load": _optional_text,
        "init": _optional_text,
    },
    "training": {
        "warmup_sweeps": _at_least(0),
        "rounds": _at_least(0),
        "linear_rounds": _at_least(0),
        "outer_steps_per_round": _at_least(1),
        "steps_per_round": _at_least(0),
        "batch_size": _at_least(1),
        "lr": _positive_number,
        "weight_decay": _bounded(_number, lambda v: v >= 0, ">= 0"),
        "max_samples": _at_least(1),
        "validation_fraction": _bounded(_number, lambda v: 0 <= v < 1, ">= 0 and < 1"),
        "validate_every": _at_least(1),
        "patience": _at_least(1),
        "precision": _choice("float32", "float64"),
    },
    "sampler": {
        "kind": _choice(*SAMPLER_KINDS),
        "chains_per_rank": _at_least(1),
        "inner_sweeps": _auto_or(_at_least(1), "measured before production"),
        "inner_block": _auto_or(_at_least(0), "measured before production"),
        "thermalization": _at_least(0),
        "measurements": _at_least(1),
        "measure_every": _at_least(1),
    },
    "output": {
        "dir": _bounded(_text, lambda v: v.strip() != "", "a non-empty directory path"),
        "checkpoint_every": _positive_number,
    },
}
SEED_RULE = _at_least(0)
EVALUATOR_OPTIONS.update(
    dense={},
    cupy={"device": _at_least(0)},
    slepc={
        "eps_type": _choice("krylovschur", "lapack", "scalapack"),
        "ds_method": _bounded(_integer, lambda v: 0 <= v <= 2, "0, 1 or 2"),
        "tol": _positive_number,
        "petsc_options": _petsc_options,
    },
)


#: model.T must lie within these multiples of the bandwidth (see `_check_temperature`).
T_MIN_PER_BANDWIDTH = 1e-6
T_MAX_PER_BANDWIDTH = 1e3


def bandwidth(model: ModelConfig) -> float:
    """Upper bound on the spread of the one-body spectrum: 2 Σ_n |t_n| |D_n| + |J| (8t + |J| for the usual model)."""
    from slmc_hpc.lattice import shell_vectors

    shells = shell_vectors(max(model.hoppings, default=0))
    return 2.0 * sum(abs(t) * len(shells[n]) for n, t in model.hoppings.items()) + abs(model.J)


def _check_temperature(model: ModelConfig) -> None:
    """Refuse temperatures outside [1e-6, 1e3] × bandwidth W: there the sampling answers no physics question.

    Below 1e-6 W, exp(-ΔΩ/T) underflows to 0 for every move with ΔΩ > ~7e-4 W, so the Metropolis test is a
    quench, not equilibrium at T, and the rounding error of ΔΩ (~1e-16 N W) comes within a few decades of T;
    susceptibilities ∝ 1/T are then meaningless (T = 1e-300 gave chi_ms ~ 1e299). Above 1e3 W every Fermi
    factor is 1/2 to 1e-3 and every move is accepted with probability > 0.999: free spins, T = infinity.
    """
    width = bandwidth(model)
    if width == 0.0:  # no hopping and no coupling: no energy scale to compare with
        return
    low, high = T_MIN_PER_BANDWIDTH * width, T_MAX_PER_BANDWIDTH * width
    if not low <= model.T <= high:
        raise ConfigError(
            f"model.T: must lie between {low:.3g} and {high:.3g} (1e-6 to 1e3 times the bandwidth "
            f"W = 2 sum_n |t_n| |D_n| + |J| = {width:.3g}), got {_show(model.T)}: below, exp(-dOmega/T) "
            "underflows and Metropolis is a quench; above, the spins are free (infinite temperature)"
        )


def _check_combinations(cfg: Config) -> None:
    """Rules that involve more than one key, or the file system."""
    _check_temperature(cfg.model)
    ev = cfg.evaluator
    if ev.ranks_per_config > 1 and ev.kind != "slepc":
        raise ConfigError(
            f"evaluator.ranks_per_config: must be 1 unless evaluator.kind is slepc "
            f"(only SLEPc shares one diagonalisation between ranks), got {ev.ranks_per_config} with kind {ev.kind}"
        )
    allowed = EVALUATOR_OPTIONS[ev.kind]
    for key, value in ev.options.items():
        if key not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise ConfigError(
                f"evaluator.options.{key}: not a setting of the {ev.kind} evaluator; expected one of: {expected}"
            )
        ev.options[key] = allowed[key](f"evaluator.options.{key}", value)
    for key in ("load", "init"):
        path = getattr(cfg.effective, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"effective.{key}: file not found: {_show(path)} (an earlier run's run.h5 was expected)")
    if cfg.effective.load is not None and cfg.effective.init is not None:
        raise ConfigError(
            "effective.init: cannot be combined with effective.load (load freezes a trained model, init trains it "
            "further); set one of them to null"
        )


# ----------------------------------------------------------------------------------------------- loading


def _yaml_safe() -> YAML:
    return YAML(typ="safe", pure=True)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return _yaml_safe().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem and exc.context_mark is not None:
            problem += f" ({exc.context}, line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None


DEFAULTS: dict[str, Any] = _parse_yaml(DEFAULT_YAML, "<defaults>")


def _merge(data: Any, source: str) -> dict[str, Any]:
    """The user's sections merged over a copy of DEFAULTS; unknown keys and non-mappings rejected."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections ({', '.join(DEFAULTS)}), {_got(data)}"
        )
    merged = copy.deepcopy(DEFAULTS)
    for key, value in data.items():
        if key not in DEFAULTS:
            raise ConfigError(f"{_show_key(key)}: unknown key; expected one of {', '.join(DEFAULTS)}")
        if key not in SECTIONS:
            merged[key] = value
            continue
        if value is None:  # an empty section (all keys commented out) means "defaults"
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {key} settings, {_got(value)}")
        for sub, sub_value in value.items():
            if sub not in DEFAULTS[key]:
                raise ConfigError(f"{key}.{_show_key(sub)}: unknown key; expected one of {', '.join(DEFAULTS[key])}")
            merged[key][sub] = sub_value
    return merged


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) else _show(key)


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a (partial) nested dict, merged over DEFAULTS, into a Config.

    `source` names where the dict came from; it is not part of the key-path messages, which start
    with the key path so that they read the same whatever the source.
    """
    merged = _merge(d, source)
    sections = {
        name: cls(**{key: RULES[name][key](f"{name}.{key}", merged[name][key]) for key in RULES[name]})
        for name, cls in SECTIONS.items()
    }
    cfg = Config(**sections, seed=SEED_RULE("seed", merged["seed"]))
    _check_combinations(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML job file; every problem is a ConfigError naming the file or key path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = _parse_yaml(text, str(path))
        if data is None:  # a forgotten or truncated file must not silently run the defaults
            raise ConfigError(
                f"{path}: empty (or only comments): write at least one key, or run without a file for the defaults"
            )
        return config_from_dict(data, source=str(path))
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(str(path)):
            message = f"{message} (in {path})"
        raise ConfigError(message) from None


def default_config() -> Config:
    """The embedded defaults (DESIGN §7)."""
    return config_from_dict({}, source="<defaults>")


# ----------------------------------------------------------------------------------------------- output


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (section order as in DESIGN §7), suitable for YAML and config_from_dict."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {f.name: copy.deepcopy(getattr(section, f.name)) for f in fields(section)}
    out["seed"] = cfg.seed
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved configuration (defaults included) as commented YAML; load_config reads it back equal."""
    yaml = YAML(typ="rt")
    yaml.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    template = yaml.load(DEFAULT_YAML)
    for name, section in to_dict(cfg).items():
        if name not in SECTIONS:
            template[name] = section
            continue
        for key, value in section.items():
            if key == "hoppings":
                template[name][key].clear()
                template[name][key].update(value)
            else:
                template[name][key] = value
    stream = io.StringIO()
    yaml.dump(template, stream)
    return stream.getvalue()


def config_sha256(cfg: Config) -> str:
    """sha256 (hex) of to_yaml(cfg): the text stored next to it in run.h5, so either verifies the other."""
    return hashlib.sha256(to_yaml(cfg).encode("utf-8")).hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key in SECTIONS and not prefix:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def resume_differences(old: Config, new: Config) -> list[str]:
    """`key.path: old -> new` for every key that differs, except those a resume may change (RESUMABLE_KEYS)."""
    before, after = _flatten(to_dict(old)), _flatten(to_dict(new))
    return [
        f"{path}: {_show(before[path])} -> {_show(after[path])}"
        for path in before
        if path not in RESUMABLE_KEYS and before[path] != after[path]
    ]


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new, validated Config with dotted keys replaced: with_overrides(cfg, {"sampler.measurements": 10})."""
    d = to_dict(cfg)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if key:
            if not isinstance(d.get(section), dict):
                raise ConfigError(f"{dotted}: unknown key; expected one of {', '.join(SECTIONS)} as the section")
            d[section][key] = value
        else:
            d[section] = value
    return config_from_dict(d, source="<overrides>")


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`["model.T=0.1", "model.hoppings={1: 1.0, 2: 0.1}"]` -> dotted overrides; values are YAML scalars/flows."""
    overrides = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, like model.T=0.1")
        overrides[key.strip()] = _parse_yaml(text, f"--set {item}")
    return overrides
