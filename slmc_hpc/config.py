"""Run configuration: YAML -> validated, frozen dataclasses; every error names the key path.

`model.kind` selects the system (default: the registry's first, `double_exchange`, so every job file
written before there were systems means what it meant). The system's `Schema` gives its commented
defaults (every section, every key) and the rules of its own keys; the framework adds the rules of the
keys every system shares (output, seed, the sampler's chain counts and measurements, the self-learning
loop's `training` keys, `effective.load`/`init`). Everything is checked before anything runs, so a typo
in a job file costs seconds, not a queue slot: each problem raises `ConfigError` with one message naming
the key path, the value and what was expected. Partial files are merged over the defaults section by
section (a key that is a mapping of its own, such as `model.hoppings`, is replaced as a whole). Relative
paths (`output.dir`, `effective.load`) are relative to the working directory of the run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from slmc_hpc.errors import ConfigError

__all__ = ["ConfigError"]

SECTIONS = ("model", "evaluator", "effective", "training", "sampler", "output")
# Keys that may change when a run is resumed from its checkpoint (more or less production, I/O cadence).
RESUMABLE_KEYS = frozenset({"sampler.measurements", "sampler.measure_every", "output.checkpoint_every"})
AUTO = "auto"

Rule = Callable[[str, Any], Any]


# ----------------------------------------------------------------------------------------------- values


def show(value: Any) -> str:
    """A value as the user wrote it in YAML (null, true, 'text', 1.5)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def got(value: Any) -> str:
    return f"got {show(value)} ({type(value).__name__})"


def integer(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, {got(value)}")
    return value


def number(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number, {got(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {show(value)}")
    return float(value)


def text(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, {got(value)}")
    return value


def optional_text(path: str, value: Any) -> str | None:
    return None if value is None else text(path, value)


def options_mapping(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of solver settings, {got(value)}")
    return {text(f"{path} key", key): item for key, item in value.items()}


def petsc_options(path: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of PETSc option names to values, {got(value)}")
    # PETSc takes option values as text; a flag without a value (null) is the empty string.
    return {text(f"{path} key", key): "" if item is None else str(item) for key, item in value.items()}


def choice(*options: str) -> Rule:
    def check(path: str, value: Any) -> str:
        if text(path, value) not in options:
            raise ConfigError(f"{path}: must be one of {' | '.join(options)}, got {show(value)}")
        return value

    return check


def bounded(convert: Rule, ok: Callable[[Any], bool], expected: str) -> Rule:
    def check(path: str, value: Any) -> Any:
        converted = convert(path, value)
        if not ok(converted):
            raise ConfigError(f"{path}: must be {expected}, got {show(value)}")
        return converted

    return check


def at_least(n: int) -> Rule:
    return bounded(integer, lambda v: v >= n, f">= {n}")


def auto_or(rule: Rule, meaning: str) -> Rule:
    """`auto` (resolved by the run: `meaning`) or a value that `rule` accepts."""

    def check(path: str, value: Any) -> Any:
        if value == AUTO:
            return AUTO
        try:
            return rule(path, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (or auto: {meaning})") from None

    return check


positive_number = bounded(number, lambda v: v > 0, "> 0")


#: The framework's keys: every system's defaults hold them, and these rules check them.
FRAMEWORK_RULES: dict[str, dict[str, Rule]] = {
    "model": {},  # `kind` is checked against the registry before anything else
    "evaluator": {"options": options_mapping},
    "effective": {"load": optional_text, "init": optional_text},
    "training": {
        "warmup_sweeps": at_least(0),
        "rounds": at_least(0),
        "linear_rounds": at_least(0),
        "outer_steps_per_round": at_least(1),
        "steps_per_round": at_least(0),
        "batch_size": at_least(1),
        "lr": positive_number,
        "weight_decay": bounded(number, lambda v: v >= 0, ">= 0"),
        "max_samples": at_least(1),
        "validation_fraction": bounded(number, lambda v: 0 <= v < 1, ">= 0 and < 1"),
        "validate_every": at_least(1),
        "patience": at_least(1),
        "precision": choice("float32", "float64"),
    },
    "sampler": {
        "chains_per_rank": at_least(1),
        "thermalization": at_least(0),
        "measurements": at_least(1),
        "measure_every": at_least(1),
    },
    "output": {
        "dir": bounded(text, lambda v: v.strip() != "", "a non-empty directory path"),
        "checkpoint_every": positive_number,
    },
}
SEED_RULE = at_least(0)


# ----------------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class OutputConfig:
    dir: str
    checkpoint_every: float


@dataclass(frozen=True)
class Config:
    """A validated job: one frozen section object per section (their fields are the system's keys)."""

    model: Any
    evaluator: Any
    effective: Any
    training: Any
    sampler: Any
    output: OutputConfig
    seed: int

    @property
    def system(self):
        """The system package's SYSTEM object that `model.kind` names."""
        from slmc_hpc.systems import get_system

        return get_system(self.model.kind)


# ----------------------------------------------------------------------------------------------- YAML


def _yaml_safe() -> YAML:
    return YAML(typ="safe", pure=True)


def parse_yaml(text_: str, source: str) -> Any:
    try:
        return _yaml_safe().load(text_)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem and exc.context_mark is not None:
            problem += f" ({exc.context}, line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None


@cache
def _system_tables(kind: str) -> tuple[dict[str, Any], dict[str, dict[str, Rule]], dict[str, type]]:
    """(defaults, rules, section classes) of a system: its schema merged with the framework's rules."""
    from slmc_hpc.systems import get_system

    schema = get_system(kind).schema
    defaults = parse_yaml(schema.defaults_yaml, f"<{kind} defaults>")
    rules: dict[str, dict[str, Rule]] = {}
    classes: dict[str, type] = {}
    for section in SECTIONS:
        keys = list(defaults[section])
        own = dict(schema.rules.get(section, {}))
        rules[section] = {key: own.get(key) or FRAMEWORK_RULES[section].get(key) for key in keys}
        missing = [key for key, rule in rules[section].items() if rule is None and key != "kind"]
        if missing:  # a programming error of the system package, not bad input
            raise TypeError(f"system {kind}: no rule for {section}.{', '.join(missing)}")
        if section == "output":
            classes[section] = OutputConfig
        else:
            name = "".join(part.title() for part in kind.split("_")) + section.title() + "Config"
            classes[section] = dataclasses.make_dataclass(name, [(key, Any) for key in keys], frozen=True)
    return defaults, rules, classes


def defaults(kind: str | None = None) -> dict[str, Any]:
    """The embedded defaults of a system (the default system's if None), as a nested dict."""
    from slmc_hpc.systems import DEFAULT_KIND

    return copy.deepcopy(_system_tables(kind or DEFAULT_KIND)[0])


def list_keys(kind: str | None = None) -> frozenset[str]:
    """The dotted keys of a system (the default system's if None) whose value is a list: a list given for one of
    them is its value, a list of lists a scan (`scan.scanned_keys`)."""
    from slmc_hpc.systems import DEFAULT_KIND, get_system

    kind = kind or DEFAULT_KIND
    table = _system_tables(kind)[0]
    listed = {
        f"{s}.{k}"
        for s, keys in table.items()
        if isinstance(keys, dict)
        for k, v in keys.items()
        if isinstance(v, list)
    }
    return frozenset(listed) | get_system(kind).schema.list_keys


def _kind(data: Mapping[str, Any]) -> str:
    """`model.kind` of a (partial) job, checked against the registry; the default system where absent."""
    from slmc_hpc.systems import DEFAULT_KIND, KINDS

    model = data.get("model")
    kind = model.get("kind", DEFAULT_KIND) if isinstance(model, Mapping) else DEFAULT_KIND
    return choice(*KINDS)("model.kind", kind)


def _merge(data: Any, source: str) -> tuple[str, dict[str, Any]]:
    """The system's kind and the user's sections merged over a copy of its defaults; unknown keys rejected."""
    from slmc_hpc.systems import DEFAULT_KIND

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections ({', '.join(defaults())}), {got(data)}"
        )
    kind = _kind(data) if isinstance(data.get("model", {}), Mapping) else DEFAULT_KIND
    merged = defaults(kind)
    for key, value in data.items():
        if key not in merged:
            raise ConfigError(f"{_show_key(key)}: unknown key; expected one of {', '.join(merged)}")
        if key not in SECTIONS:
            merged[key] = value
            continue
        if value is None:  # an empty section (all keys commented out) means "defaults"
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {key} settings, {got(value)}")
        for sub, sub_value in value.items():
            if sub not in merged[key]:
                where = f" of model.kind {kind}" if kind != DEFAULT_KIND or key == "model" else ""
                raise ConfigError(
                    f"{key}.{_show_key(sub)}: unknown key{where}; expected one of {', '.join(merged[key])}"
                )
            merged[key][sub] = sub_value
    return kind, merged


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) else show(key)


def _check_combinations(cfg: Config) -> None:
    """The framework's rules that involve several keys or the file system; then the system's own."""
    schema = cfg.system.schema
    ev = cfg.evaluator
    allowed = schema.evaluator_options.get(ev.kind, {})
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
            raise ConfigError(f"effective.{key}: file not found: {show(path)} (an earlier run's run.h5 was expected)")
    if cfg.effective.load is not None and cfg.effective.init is not None:
        raise ConfigError(
            "effective.init: cannot be combined with effective.load (load freezes a trained model, init trains it "
            "further); set one of them to null"
        )
    schema.check(cfg)


def config_from_dict(d: Mapping[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a (partial) nested dict, merged over its system's defaults, into a Config.

    `source` names where the dict came from; it is not part of the key-path messages, which start
    with the key path so that they read the same whatever the source.
    """
    kind, merged = _merge(d, source)
    _, rules, classes = _system_tables(kind)
    sections = {}
    for name in SECTIONS:
        values = {}
        for key, rule in rules[name].items():
            values[key] = kind if (name, key) == ("model", "kind") else rule(f"{name}.{key}", merged[name][key])
        sections[name] = classes[name](**values)
    cfg = Config(**sections, seed=SEED_RULE("seed", merged["seed"]))
    _check_combinations(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML job file; every problem is a ConfigError naming the file or key path."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = parse_yaml(content, str(path))
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


def default_config(kind: str | None = None) -> Config:
    """The embedded defaults of a system (of the default system, double_exchange, if None)."""
    return config_from_dict({"model": {"kind": kind}} if kind else {}, source="<defaults>")


# ----------------------------------------------------------------------------------------------- output


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (section order as in the defaults), suitable for YAML and config_from_dict."""
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
    template = yaml.load(cfg.system.schema.defaults_yaml)
    for name, section in to_dict(cfg).items():
        if name not in SECTIONS:
            template[name] = section
            continue
        for key, value in section.items():
            current = template[name].get(key)
            if isinstance(value, dict) and isinstance(current, dict):
                current.clear()  # keep the flow style of mappings such as hoppings: {1: 1.0}
                current.update(value)
            elif isinstance(value, list) and isinstance(current, list):
                current[:] = value  # and of lists such as shape: [4, 4, 4, 4]
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
        f"{path}: {show(before.get(path))} -> {show(after.get(path))}"
        for path in dict.fromkeys([*before, *after])
        if path not in RESUMABLE_KEYS and before.get(path) != after.get(path)
    ]


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A new, validated Config with dotted keys replaced: with_overrides(cfg, {"sampler.measurements": 10}).

    An override of `model.kind` to another system starts that system from its own defaults (the old system's keys
    mean nothing there); only the framework's `output` and `seed` carry over.
    """
    d = to_dict(cfg)
    model = overrides.get("model")
    kind = overrides.get("model.kind", model.get("kind") if isinstance(model, Mapping) else None)
    if kind is not None and kind != d.get("model", {}).get("kind"):
        d = {name: d[name] for name in ("output", "seed") if name in d}
        d["model"] = {"kind": kind}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if key:
            if section in SECTIONS and section not in d:  # a section the new system starts from its defaults
                d[section] = {}
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
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, like model.T=0.1")
        overrides[key.strip()] = parse_yaml(value, f"--set {item}")
    return overrides
