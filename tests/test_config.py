"""Tests of gossipfl.config: SimConfig defaults and validation, make_config, load_config."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from gossipfl.config import SimConfig, config_keys, load_config, make_config
from gossipfl.errors import ConfigError, GossipError

# The defaults the CLI help text promises ("default 1000", "default 0.1", ...).
DEFAULTS = {
    "topology": "ring",
    "nodes": None,
    "weights": None,
    "algorithm": "dpsgd",
    "init": "shared",
    "dataset": "digits",
    "partition": "iid",
    "model": "mlp",
    "hidden": 64,
    "optimizer": "sgd",
    "rounds": 1000,
    "lr": 0.1,
    "batch_size": 32,
    "local_steps": 1,
    "prox_mu": 0.0,
    "compress": "none",
    "gamma": "auto",
    "dim": 100,
    "eval_every": 10,
    "mixing": "auto",
    "seed": 0,
    "out": None,
    "name": None,
    "robust": "none",
    "clip_tau": "auto",
    "trim": 1,
    "attack": "none",
    "attackers": 0,
    "attack_scale": None,
}


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The exception's message, checked to be one non-empty line (the CLI prints it as one)."""
    message = str(exc.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"message spans several lines: {message!r}"
    return message


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- SimConfig


def test_defaults_are_the_documented_ones():
    cfg = SimConfig()
    assert cfg.to_dict() == DEFAULTS
    assert set(config_keys()) == set(DEFAULTS)


def test_config_error_is_a_gossip_error():
    # the CLI turns GossipError (and only that) into a friendly `error:` line
    assert issubclass(ConfigError, GossipError)


def test_config_is_frozen():
    cfg = SimConfig(rounds=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 8  # type: ignore[misc]
    assert cfg.rounds == 7


def test_to_dict_is_json_and_round_trips_through_make_config():
    cfg = make_config({"algorithm": "consensus", "topology": "torus:4x4", "rounds": 3, "lr": 0.5, "out": "runs/x"})
    data = json.loads(json.dumps(cfg.to_dict()))
    assert make_config(data) == cfg


@pytest.mark.parametrize("values", [
    {"rounds": 1, "batch_size": 1, "dim": 1, "eval_every": 1, "hidden": 1},
    {"lr": 1},  # an integer learning rate is a positive number
    {"nodes": 8, "seed": 123},
    {"algorithm": "centralized", "optimizer": "adam", "mixing": "dense"},
])
def test_valid_values_are_accepted(values):
    cfg = make_config(values)
    for key, value in values.items():
        assert getattr(cfg, key) == value


# ----------------------------------------------------------------------------- make_config


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError) as exc:
        make_config({"rounds": 3, "roundz": 4})
    message = one_line(exc)
    assert "'roundz'" in message
    assert "valid keys" in message
    for key in config_keys():
        assert key in message


def test_several_unknown_keys_are_all_named_with_the_source():
    with pytest.raises(ConfigError) as exc:
        make_config({"foo": 1, "bar": 2}, source="flags")
    message = one_line(exc)
    assert "'foo'" in message and "'bar'" in message
    assert "in flags" in message


@pytest.mark.parametrize(("values", "words"), [
    ({"rounds": 0}, ["rounds", "positive integer", "0"]),
    ({"rounds": -3}, ["rounds", "positive integer", "-3"]),
    ({"rounds": 2.5}, ["rounds", "positive integer", "2.5"]),
    ({"rounds": "5"}, ["rounds", "positive integer", "'5'"]),
    ({"eval_every": 0}, ["eval_every", "positive integer"]),
    ({"dim": 0}, ["dim", "positive integer"]),
    ({"hidden": 0}, ["hidden", "positive integer"]),
    ({"batch_size": True}, ["batch_size", "positive integer", "True"]),
    ({"lr": -1}, ["lr", "positive finite number", "-1"]),
    ({"lr": 0.0}, ["lr", "positive finite number"]),
    ({"lr": float("nan")}, ["lr", "positive finite number"]),
    ({"lr": "0.1"}, ["lr", "positive finite number"]),
    ({"nodes": "x"}, ["nodes", "integer", "'x'"]),
    ({"nodes": True}, ["nodes", "integer"]),
    ({"seed": 1.5}, ["seed", "integer", "1.5"]),
    ({"algorithm": "foo"}, ["algorithm", "'foo'", "accepted", "dpsgd", "consensus", "centralized"]),
    ({"optimizer": "foo"}, ["optimizer", "'foo'", "accepted", "sgd", "momentum", "adam"]),
    ({"mixing": "foo"}, ["mixing", "'foo'", "accepted", "auto", "sparse", "dense"]),
])
def test_bad_values_raise_config_error_naming_key_and_value(values, words):
    with pytest.raises(ConfigError) as exc:
        make_config(values)
    message = one_line(exc)
    for word in words:
        assert word in message


def test_infinite_learning_rate_is_refused():
    with pytest.raises(ConfigError, match="lr"):
        make_config({"lr": math.inf})


# ----------------------------------------------------------------------------- load_config


def test_load_flat_keys(tmp_path):
    path = write(tmp_path / "exp.toml", 'algorithm = "consensus"\ntopology = "torus:4x4"\nrounds = 7\nlr = 0.5\n')
    cfg = load_config(path)
    assert (cfg.algorithm, cfg.topology, cfg.rounds, cfg.lr) == ("consensus", "torus:4x4", 7, 0.5)
    # keys the file leaves out keep their defaults
    assert cfg.dataset == DEFAULTS["dataset"] and cfg.seed == DEFAULTS["seed"]


def test_load_experiment_table_and_str_path(tmp_path):
    path = write(tmp_path / "exp.toml", '[experiment]\nmodel = "logreg"\npartition = "dirichlet:0.5"\nrounds = 11\n')
    cfg = load_config(str(path))
    assert (cfg.model, cfg.partition, cfg.rounds) == ("logreg", "dirichlet:0.5", 11)


@pytest.mark.parametrize("layout", ["flat", "table"])
def test_overrides_win_over_file_values(tmp_path, layout):
    body = 'rounds = 3\nalgorithm = "consensus"\ndim = 4\n'
    text = body if layout == "flat" else "[experiment]\n" + body
    path = write(tmp_path / "exp.toml", text)
    cfg = load_config(path, {"rounds": 5, "seed": 9})
    assert cfg.rounds == 5  # the override wins
    assert cfg.seed == 9  # an override the file does not set
    assert (cfg.algorithm, cfg.dim) == ("consensus", 4)  # the file's other values stay


def test_unknown_key_in_file_names_key_and_path(tmp_path):
    path = write(tmp_path / "exp.toml", "rounds = 3\nroundz = 4\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = one_line(exc)
    assert "'roundz'" in message and str(path) in message and "valid keys" in message


def test_unknown_key_in_experiment_table(tmp_path):
    path = write(tmp_path / "exp.toml", "[experiment]\nrounds = 3\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "'learning_rate'" in one_line(exc)


def test_unknown_override_is_refused_too(tmp_path):
    path = write(tmp_path / "exp.toml", "rounds = 3\n")
    with pytest.raises(ConfigError, match="'bogus'"):
        load_config(path, {"bogus": 1})


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = one_line(exc)
    assert str(path) in message and "does not exist" in message


def test_invalid_toml_names_the_path_and_the_place(tmp_path):
    path = write(tmp_path / "broken.toml", "rounds = 3\nlr = \n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = one_line(exc)
    assert str(path) in message and "not valid TOML" in message and "line 2" in message


def test_non_utf8_file_gives_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in one_line(exc)


def test_directory_instead_of_file_gives_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert str(tmp_path) in one_line(exc)


def test_bad_value_in_file_names_the_path(tmp_path):
    path = write(tmp_path / "exp.toml", "rounds = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = one_line(exc)
    assert "rounds" in message
    assert str(path) in message
