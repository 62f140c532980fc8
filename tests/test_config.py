"""Configuration: defaults are DESIGN §7, YAML round trips, and every bad input names its key path."""

from __future__ import annotations

import re

import pytest
from ruamel.yaml import YAML

from slmc_hpc.config import (
    Config,
    config_from_dict,
    config_sha256,
    default_config,
    defaults,
    load_config,
    parse_overrides,
    resume_differences,
    to_dict,
    to_yaml,
    with_overrides,
)
from slmc_hpc.errors import ConfigError, InputError
from slmc_hpc.systems.double_exchange.schema import bandwidth
from tests.conftest import REPO

DEFAULTS = defaults()

DESIGN = REPO.parent / "shared" / "DESIGN.md"

#: DESIGN §7's keys with its first-guess values. The key *names* are the public contract; the default
#: *values* are whatever measures best (several are `auto`, resolved per lattice), so only names are pinned.
DESIGN_SECTION_7 = {
    "model": {"lx": 6, "ly": 6, "hoppings": {1: 1.0}, "J": 1.0, "mu": 0.0, "T": 0.05},
    "evaluator": {"kind": "dense", "ranks_per_config": 1},
    "effective": {"kind": "transformer", "n_J": 3, "n_layers": 2, "n_att": 6, "load": None},
    "training": {
        "warmup_sweeps": 100,
        "rounds": 5,
        "outer_steps_per_round": 50,
        "steps_per_round": 200,
        "batch_size": 64,
        "lr": 1.0e-3,
        "weight_decay": 1.0e-4,
    },
    "sampler": {
        "kind": "slmc",
        "chains_per_rank": 8,
        "inner_sweeps": 1,
        "thermalization": 100,
        "measurements": 1000,
        "measure_every": 1,
    },
    "output": {"dir": "runs/demo", "checkpoint_every": 300},
    "seed": 1234,
}


def test_defaults_keep_every_key_of_design_section_7():
    assert list(DEFAULTS) == list(DESIGN_SECTION_7)  # section order as documented
    for section, keys in DESIGN_SECTION_7.items():
        if isinstance(keys, dict):
            assert set(keys) <= set(DEFAULTS[section]), section
    assert to_dict(default_config()) == {
        name: dict(value) if isinstance(value, dict) else value for name, value in DEFAULTS.items()
    }
    # The lattice-dependent defaults are `auto`; DESIGN's own values are still accepted as they are.
    defaults = default_config()
    assert (defaults.effective.n_J, defaults.sampler.inner_sweeps, defaults.sampler.inner_block) == ("auto",) * 3
    assert config_from_dict(DESIGN_SECTION_7).sampler.inner_sweeps == 1


@pytest.mark.skipif(not DESIGN.exists(), reason="DESIGN.md not next to the checkout")
def test_the_yaml_block_in_design_md_is_a_valid_job():
    block = re.search(r"## 7\..*?```yaml\n(.*?)```", DESIGN.read_text(), re.S).group(1)
    documented = YAML(typ="safe").load(block)
    assert to_dict(config_from_dict(documented)) == to_dict(config_from_dict(DESIGN_SECTION_7))


def test_to_yaml_round_trips_through_load(tmp_path):
    cfg = with_overrides(
        default_config(),
        {
            "model.hoppings": {1: 1.0, 2: -0.25},
            "model.J": -2,
            "model.T": 0.125,
            "effective.kind": "linear",
            "training.lr": 3e-5,
            "sampler.measurements": 7,
            "output.dir": str(tmp_path / "out"),
            "seed": 0,
        },
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    loaded = load_config(path)
    assert loaded == cfg
    assert to_yaml(loaded) == to_yaml(cfg)
    assert config_sha256(loaded) == config_sha256(cfg) != config_sha256(default_config())
    assert isinstance(loaded.model.J, float) and loaded.model.hoppings == {1: 1.0, 2: -0.25}


def test_partial_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  lx: 4\n  hoppings: {2: 0.5}\nsampler:\nseed: 7\n")
    cfg = load_config(path)
    assert (cfg.model.lx, cfg.model.ly, cfg.model.T, cfg.seed) == (4, 6, 0.05, 7)
    assert cfg.model.hoppings == {2: 0.5}  # a mapping value is replaced, not merged
    assert cfg.sampler == default_config().sampler  # an empty section means defaults


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing set\n"])
def test_empty_file_is_refused(tmp_path, text):
    """A forgotten or truncated job file must not run the defaults silently (in the default output.dir)."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{empty}: empty \(or only comments\): write at least one key, or run"):
        load_config(empty)


def test_empty_file_exits_2_with_one_message(tmp_path, capsys):
    from slmc_hpc.cli import main

    (tmp_path / "empty.yaml").write_text("")
    assert main(["config", str(tmp_path / "empty.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"slmc-hpc: error: {tmp_path / 'empty.yaml'}: empty")


def test_temperature_bounds_follow_the_bandwidth():
    """W = 2 sum_n |t_n| |D_n| + |J|: 2*1*4 + 1 = 9 for the defaults; T must lie in [1e-6 W, 1e3 W]."""
    assert bandwidth(default_config().model) == 9.0
    cfg = config_from_dict({"model": {"hoppings": {1: 1.0, 2: -0.5}, "J": -4.0}})
    assert bandwidth(cfg.model) == 2 * (4 * 1.0 + 4 * 0.5) + 4.0  # shell 2 (diagonals) also has 4 vectors
    for T in (9e-6, 9e3):  # the bounds themselves are allowed
        assert config_from_dict({"model": {"T": T}}).model.T == T
    with pytest.raises(ConfigError, match=r"^model\.T: must lie between 9e-06 and 9e\+03 .* got 1e-300: below"):
        config_from_dict({"model": {"T": 1e-300}})
    with pytest.raises(ConfigError, match=r"^model\.T: .*W = .* = 9\), got 100000.0: .*infinite temperature"):
        config_from_dict({"model": {"T": 1e5}})
    assert config_from_dict({"model": {"hoppings": {}, "J": 0.0, "T": 1e-9}}).model.T == 1e-9  # no energy scale


def test_config_is_frozen():
    cfg = default_config()
    with pytest.raises(AttributeError):
        cfg.model.T = 1.0
    assert isinstance(cfg, Config) and issubclass(ConfigError, InputError)


# (overrides, key path expected at the start of the message, other fragments expected in it)
BAD = [
    ({"model": {"Tt": 1}}, "model.Tt", ["unknown key", "lx, ly, hoppings, J, mu, T"]),
    ({"modle": {}}, "modle", ["unknown key", "model"]),
    ({"sampler": {"chains": 2}}, "sampler.chains", ["unknown key", "chains_per_rank"]),
    ({"model": 3}, "model", ["mapping"]),
    ({"model": {"lx": True}}, "model.lx", ["integer", "true"]),
    ({"model": {"lx": 6.0}}, "model.lx", ["integer", "6.0"]),
    ({"model": {"lx": "6"}}, "model.lx", ["integer", "'6'"]),
    ({"model": {"T": "hot"}}, "model.T", ["number", "'hot'"]),
    ({"model": {"J": False}}, "model.J", ["number", "false"]),
    ({"model": {"mu": float("nan")}}, "model.mu", ["finite", "nan"]),
    ({"model": {"hoppings": {"1": 1.0}}}, "model.hoppings", ["integers >= 1", "'1'"]),
    ({"model": {"hoppings": {0: 1.0}}}, "model.hoppings", ["integers >= 1", "0"]),
    ({"model": {"hoppings": {1: "x"}}}, "model.hoppings.1", ["number", "'x'"]),
    ({"model": {"hoppings": [1.0]}}, "model.hoppings", ["mapping", "[1.0]"]),
    ({"model": {"T": -1}}, "model.T", ["> 0", "got -1"]),
    ({"model": {"T": 0}}, "model.T", ["> 0", "got 0"]),
    ({"model": {"T": 1e-300}}, "model.T", ["bandwidth", "got 1e-300", "underflows"]),
    ({"model": {"T": 1e5}}, "model.T", ["bandwidth", "got 100000.0", "free"]),
    ({"model": {"lx": 1}}, "model.lx", [">= 2", "got 1"]),
    ({"model": {"ly": 0}}, "model.ly", [">= 2", "got 0"]),
    ({"evaluator": {"kind": "numpy"}}, "evaluator.kind", ["dense | cupy | slepc", "'numpy'"]),
    ({"evaluator": {"ranks_per_config": 0}}, "evaluator.ranks_per_config", [">= 1", "got 0"]),
    ({"evaluator": {"ranks_per_config": 2}}, "evaluator.ranks_per_config", ["slepc", "got 2", "dense"]),
    ({"effective": {"kind": "mlp"}}, "effective.kind", ["linear | transformer", "'mlp'"]),
    ({"effective": {"n_J": 0}}, "effective.n_J", [">= 1", "got 0"]),
    ({"effective": {"n_layers": -1}}, "effective.n_layers", [">= 0", "got -1"]),
    ({"effective": {"n_att": -1}}, "effective.n_att", [">= 0", "got -1"]),
    ({"effective": {"load": "no/such/run.h5"}}, "effective.load", ["not found", "no/such/run.h5"]),
    ({"effective": {"load": 3}}, "effective.load", ["string", "3"]),
    ({"training": {"warmup_sweeps": -1}}, "training.warmup_sweeps", [">= 0", "got -1"]),
    ({"training": {"rounds": -1}}, "training.rounds", [">= 0", "got -1"]),
    ({"training": {"outer_steps_per_round": 0}}, "training.outer_steps_per_round", [">= 1", "got 0"]),
    ({"training": {"steps_per_round": -5}}, "training.steps_per_round", [">= 0", "got -5"]),
    ({"training": {"batch_size": 0}}, "training.batch_size", [">= 1", "got 0"]),
    ({"training": {"lr": 0}}, "training.lr", ["> 0", "got 0"]),
    ({"training": {"weight_decay": -1e-4}}, "training.weight_decay", [">= 0", "got -0.0001"]),
    ({"training": {"max_samples": 0}}, "training.max_samples", [">= 1", "got 0"]),
    ({"training": {"precision": "float16"}}, "training.precision", ["float32 | float64", "'float16'"]),
    ({"sampler": {"kind": "mala"}}, "sampler.kind", ["exact | slmc | hmc | slhmc", "'mala'"]),
    ({"sampler": {"kind": "hmc"}, "evaluator": {"kind": "cupy"}}, "evaluator.kind", ["eigenvectors", "slhmc"]),
    ({"sampler": {"chains_per_rank": 0}}, "sampler.chains_per_rank", [">= 1", "got 0"]),
    ({"sampler": {"inner_sweeps": 0}}, "sampler.inner_sweeps", [">= 1", "got 0"]),
    ({"sampler": {"inner_block": -1}}, "sampler.inner_block", [">= 0", "got -1"]),
    ({"sampler": {"thermalization": -1}}, "sampler.thermalization", [">= 0", "got -1"]),
    ({"sampler": {"measurements": 0}}, "sampler.measurements", [">= 1", "got 0"]),
    ({"sampler": {"measure_every": 0}}, "sampler.measure_every", [">= 1", "got 0"]),
    ({"output": {"dir": ""}}, "output.dir", ["non-empty", "''"]),
    ({"output": {"dir": None}}, "output.dir", ["string", "null"]),
    ({"output": {"checkpoint_every": 0}}, "output.checkpoint_every", ["> 0", "got 0"]),
    ({"seed": -1}, "seed", [">= 0", "got -1"]),
    ({"seed": 1.5}, "seed", ["integer", "1.5"]),
]


@pytest.mark.parametrize("overrides, path, fragments", BAD, ids=[case[1] + ":" + repr(case[0]) for case in BAD])
def test_bad_values_name_key_path_value_and_expectation(overrides, path, fragments):
    with pytest.raises(ConfigError) as info:
        config_from_dict(overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_exact_message_for_negative_temperature():
    with pytest.raises(ConfigError, match=r"^model\.T: must be > 0 for sampling .*, got -1$"):
        config_from_dict({"model": {"T": -1}})


def test_effective_load_accepts_an_existing_file(tmp_path):
    run_file = tmp_path / "run.h5"
    run_file.write_bytes(b"")
    assert config_from_dict({"effective": {"load": str(run_file)}}).effective.load == str(run_file)


def test_slepc_may_share_a_diagonalisation():
    cfg = config_from_dict({"evaluator": {"kind": "slepc", "ranks_per_config": 4}})
    assert cfg.evaluator.ranks_per_config == 4


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- sampler\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  lx: 6\n  ly: [6,\nsampler:\n  kind: slmc\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}, line ")
    assert "malformed YAML" in str(info.value)
    path.write_text("model:\n  lx: 6\n  lx: 8\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml, line 3: malformed YAML: found duplicate key"):
        load_config(path)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  T: -1\n")
    with pytest.raises(ConfigError, match=r"^model\.T: .*got -1 \(in .*job\.yaml\)$"):
        load_config(path)


def test_resume_differences_ignore_production_length_and_checkpoint_cadence():
    old = default_config()
    harmless = with_overrides(
        old, {"sampler.measurements": 5000, "sampler.measure_every": 2, "output.checkpoint_every": 60}
    )
    assert resume_differences(old, harmless) == []
    changed = with_overrides(harmless, {"model.T": 0.1, "model.hoppings": {1: 1.0, 2: 0.2}, "seed": 9})
    assert resume_differences(old, changed) == [
        "model.hoppings: {1: 1.0} -> {1: 1.0, 2: 0.2}",
        "model.T: 0.05 -> 0.1",
        "seed: 1234 -> 9",
    ]


def test_with_overrides_validates_and_rejects_unknown_paths():
    assert with_overrides(default_config(), {"sampler.measurements": 10}).sampler.measurements == 10
    with pytest.raises(ConfigError, match=r"^sampler\.measurments: unknown key"):
        with_overrides(default_config(), {"sampler.measurments": 10})
    with pytest.raises(ConfigError, match=r"^sampler\.measurements: must be >= 1"):
        with_overrides(default_config(), {"sampler.measurements": 0})


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["model.T=0.1", "model.hoppings={1: 1, 2: -0.5}", "effective.load=null", "seed=3"]) == {
        "model.T": 0.1,
        "model.hoppings": {1: 1, 2: -0.5},
        "effective.load": None,
        "seed": 3,
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["model.T"])


def test_evaluator_options_are_checked_per_kind():
    cfg = config_from_dict(
        {"evaluator": {"kind": "slepc", "options": {"eps_type": "lapack", "petsc_options": {"eps_view": None}}}}
    )
    assert cfg.evaluator.options == {"eps_type": "lapack", "petsc_options": {"eps_view": ""}}
    with pytest.raises(ConfigError, match=r"^evaluator.options.device: not a setting of the dense evaluator"):
        config_from_dict({"evaluator": {"kind": "dense", "options": {"device": 0}}})
    with pytest.raises(ConfigError, match=r"^evaluator.options.ds_method: must be 0, 1 or 2, got 5"):
        config_from_dict({"evaluator": {"kind": "slepc", "options": {"ds_method": 5}}})


def test_switching_model_kind_by_override_starts_from_that_systems_defaults():
    """`slmc-hpc config --set model.kind=su2_staggered` (README): the spin keys do not follow into the gauge job."""
    from slmc_hpc.config import default_config, with_overrides

    base = with_overrides(default_config(), {"output.dir": "runs/x", "seed": 9})
    gauge = with_overrides(base, {"model.kind": "su2_staggered", "model.shape": [8, 8, 8, 8], "sampler.kind": "slhmc"})
    assert gauge.model.kind == "su2_staggered" and list(gauge.model.shape) == [8, 8, 8, 8]
    assert gauge.sampler.kind == "slhmc" and gauge.model.beta == 2.7  # the gauge defaults
    assert gauge.output.dir == "runs/x" and gauge.seed == 9  # the framework's keys carry over
