"""Tests of the `gossipfl` command line: errors, topology, simulate, plot, help.

Most cases run in-process with typer's CliRunner and tiny runs; one runs the installed console
script as a real subprocess to prove the entry point works end to end (each subprocess pays the
JAX import, so there is only one).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gossipfl.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SMALL_DATA = "synthetic:8:3"  # tiny and in-memory; loading digits would import scikit-learn


# ----------------------------------------------------------------------------- helpers


def invoke(*args: object):
    """Runs `gossipfl ARGS` in-process; stdout and stderr are captured separately."""
    return CliRunner().invoke(app, [str(a) for a in args])


def slem_of_ring(n: int) -> float:
    """SLEM of the metropolis-weighted ring (every weight 1/3): 1/3 + 2/3 cos(2 pi / n) for n >= 4."""
    return max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))


def error_line(stderr: str) -> str:
    """The single non-empty stderr line, checked to start with `error:`."""
    lines = [line for line in ANSI.sub("", stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def assert_friendly_error(result, *words: str) -> str:
    """A non-zero exit with one `error:` line holding every word, and no crash."""
    assert result.exit_code != 0, f"expected failure, got exit 0:\n{result.output}"
    # a GossipError ends in typer.Exit (SystemExit); anything else is an uncaught crash
    assert isinstance(result.exception, SystemExit), f"crashed with {result.exception!r}"
    line = error_line(result.stderr)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 1000, f"{path} is suspiciously small ({len(data)} bytes)"


def console_script() -> str:
    """The installed `gossipfl` console script (next to this interpreter, or on PATH)."""
    beside = Path(sys.executable).with_name("gossipfl")
    found = str(beside) if beside.exists() else shutil.which("gossipfl")
    assert found, "the gossipfl console script is not installed (pip install -e .)"
    return found


def run_console_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


# ----------------------------------------------------------------------------- runs shared by tests


@pytest.fixture(scope="module")
def consensus_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("consensus") / "run"
    result = invoke("simulate", "--algorithm", "consensus", "--topology", "ring:8",
                    "--rounds", 20, "--dim", 10, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def dpsgd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpsgd") / "run"
    # synthetic data rather than the default digits: same CLI path, no scikit-learn import
    result = invoke("simulate", "--topology", "ring:4", "--rounds", 4, "--eval-every", 2,
                    "--model", "logreg", "--dataset", SMALL_DATA, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


# ----------------------------------------------------------------------------- bad input


def test_unknown_topology_subprocess():
    """The real console script: one `error:` line, a non-zero status, no traceback."""
    proc = run_console_script("simulate", "--topology", "rnig:16")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = error_line(proc.stderr)
    assert "rnig:16" in line and "accepted" in line and "ring:N" in line


def test_simulate_keeps_compiled_programs_for_the_next_run(tmp_path):
    """The second identical `gossipfl simulate` finds every program in the on-disk cache: it
    compiles nothing new (start-up is mostly compilation otherwise)."""
    cache = tmp_path / "cache"
    args = ("simulate", "--algorithm", "consensus", "--topology", "ring:6", "--rounds", "12", "--dim", "5")
    env = {**os.environ, "GOSSIPFL_CACHE_DIR": str(cache), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    entries = []
    for i in range(2):
        proc = subprocess.run([console_script(), *args, "--out", str(tmp_path / f"run{i}")], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        entries.append(sorted(p.name for p in (cache / "xla").iterdir()))
    assert len(entries[0]) >= 3  # the round chunk, the distance, the model
    assert entries[1] == entries[0]


def test_unknown_topology():
    assert_friendly_error(invoke("simulate", "--topology", "rnig:16"), "'rnig:16'", "accepted", "ring:N", "torus:RxC")


def test_unknown_topology_in_topology_command():
    assert_friendly_error(invoke("topology", "rnig:16"), "'rnig:16'", "accepted")


def test_disconnected_graph():
    assert_friendly_error(invoke("simulate", "--topology", "erdos-renyi:16:0.01"),
                          "erdos-renyi:16:0.01", "disconnected", "raise P")


def test_too_few_nodes():
    assert_friendly_error(invoke("simulate", "--topology", "ring:1"), "ring:1", "at least 2", "got 1")


def test_bad_partition():
    result = invoke("simulate", "--topology", "ring:4", "--model", "logreg", "--rounds", 1,
                    "--dataset", SMALL_DATA, "--partition", "dirichlet:-1")
    assert_friendly_error(result, "'dirichlet:-1'", "accepted", "dirichlet:ALPHA", "shards:K")


def test_npz_missing_keys(tmp_path):
    data = tmp_path / "that.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.normal(size=(8, 3)), y_train=np.arange(8) % 2, x_test=rng.normal(size=(4, 3)))
    result = invoke("simulate", "--topology", "ring:4", "--model", "logreg", "--rounds", 1, "--dataset", data)
    line = assert_friendly_error(result, "y_test", "missing", "x_train, y_train, x_test, y_test")
    assert str(data) in line


def test_unknown_algorithm():
    assert_friendly_error(invoke("simulate", "--algorithm", "foo", "--rounds", 1),
                          "'foo'", "algorithm", "accepted", "dpsgd", "consensus", "centralized")


def test_bad_flag_value():
    assert_friendly_error(invoke("simulate", "--rounds", 0), "rounds", "positive integer", "0")


def test_unknown_key_in_config_file(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text("rounds = 3\nlearning_rate = 0.1\n")
    line = assert_friendly_error(invoke("simulate", "--config", config),
                                 "'learning_rate'", "valid keys", "lr", "rounds")
    assert str(config) in line


def test_missing_config_file(tmp_path):
    config = tmp_path / "absent.toml"
    assert_friendly_error(invoke("simulate", "--config", config), str(config), "does not exist")


def test_plot_of_a_directory_without_metrics(tmp_path):
    result = invoke("plot", tmp_path, "--out", tmp_path / "p.png")
    assert_friendly_error(result, str(tmp_path), "metrics.jsonl")
    assert not (tmp_path / "p.png").exists()


def test_config_that_is_a_directory(tmp_path):
    assert_friendly_error(invoke("simulate", "--config", tmp_path), str(tmp_path))


def test_out_that_is_a_file(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory\n")
    result = invoke("simulate", "--algorithm", "consensus", "--topology", "ring:4", "--dim", 3,
                    "--rounds", 1, "--out", blocker)
    assert_friendly_error(result, str(blocker))


def test_negative_seed_is_refused(tmp_path):
    result = invoke("simulate", "--topology", "ring:4", "--model", "logreg", "--rounds", 1,
                    "--seed", -1, "--out", tmp_path / "run")
    assert_friendly_error(result, "seed", "-1")


def test_rejected_run_prints_nothing_on_stdout():
    result = invoke("simulate", "--topology", "rnig:16")
    assert_friendly_error(result, "rnig:16")
    assert result.stdout == ""


# ----------------------------------------------------------------------------- topology


def test_topology_ring16():
    result = invoke("topology", "ring:16")
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.stdout)
    assert re.search(r"^\W*nodes\W+16\W*$", text, re.M), text
    assert re.search(r"^\W*edges\W+16\W*$", text, re.M), text
    slem = float(re.search(r"^\W*slem\W+([0-9.]+)", text, re.M).group(1))
    assert slem == pytest.approx(slem_of_ring(16), abs=1e-5)
    # "consensus distance shrinks by x0.9493 per round"
    assert f"x{slem_of_ring(16):.4f}" == "x0.9493" and "x0.9493" in text


def test_topology_nodes_flag_and_draw(tmp_path):
    png = tmp_path / "ring.png"
    result = invoke("topology", "ring", "--nodes", 8, "--draw", png)
    assert result.exit_code == 0, result.output
    assert re.search(r"^\W*nodes\W+8\W*$", result.stdout, re.M), result.stdout
    slem = float(re.search(r"^\W*slem\W+([0-9.]+)", result.stdout, re.M).group(1))
    assert slem == pytest.approx(slem_of_ring(8), abs=1e-5)
    assert_png(png)


# ----------------------------------------------------------------------------- simulate


def test_consensus_run_records(consensus_run):
    out, _ = consensus_run
    records = read_metrics(out)
    assert [r["round"] for r in records] == list(range(21))
    distances = np.array([r["consensus_distance"] for r in records])
    assert distances[0] > 0
    # symmetric doubly-stochastic W: each round shrinks the distance by at most the SLEM
    ratios = distances[1:] / distances[:-1]
    assert np.all(ratios <= slem_of_ring(8) * (1 + 1e-4)), ratios
    assert distances[-1] < 0.05 * distances[0]
    assert not any("accuracy" in r for r in records)  # pure averaging has no model to test


def test_consensus_run_summary_and_plot(consensus_run):
    out, result = consensus_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 20
    assert summary["topology"]["nodes"] == 8 and summary["topology"]["edges"] == 8
    assert summary["config"]["algorithm"] == "consensus" and summary["config"]["dim"] == 10
    assert summary["predicted_rate"] == pytest.approx(slem_of_ring(8), abs=1e-5)
    assert summary["measured_rate"] == pytest.approx(summary["predicted_rate"], abs=0.02)
    assert_png(out / "plot.png")
    assert "metrics.jsonl" in result.stdout  # the closing "wrote ..." line


def test_dpsgd_run_evaluates_every_eval_every_rounds(dpsgd_run):
    out, _ = dpsgd_run
    records = read_metrics(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    evals = [r for r in records if "accuracy" in r]
    assert [r["round"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert 0 <= r["node_accuracy_min"] <= r["node_accuracy_mean"] <= r["node_accuracy_max"] <= 1
        assert 0 <= r["accuracy"] <= 1 and math.isfinite(r["loss"])
    # every node starts from the same model: no disagreement, one accuracy for all
    assert records[0]["consensus_distance"] == 0
    assert evals[0]["node_accuracy_min"] == evals[0]["node_accuracy_max"]
    assert all(math.isfinite(r["train_loss"]) for r in records[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["accuracy"] == evals[-1]["accuracy"]
    assert summary["topology"]["nodes"] == 4


def test_flag_overrides_config_file(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text('algorithm = "consensus"\ntopology = "ring:4"\ndim = 3\nrounds = 3\n')
    out = tmp_path / "run"
    result = invoke("simulate", "--config", config, "--rounds", 5, "--out", out)
    assert result.exit_code == 0, result.output
    assert [r["round"] for r in read_metrics(out)] == list(range(6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 5
    # the file's other keys still apply
    assert summary["config"]["algorithm"] == "consensus" and summary["topology"]["nodes"] == 4
    assert summary["dim"] == 3


# ----------------------------------------------------------------------------- plot


def test_plot_two_runs(consensus_run, dpsgd_run, tmp_path):
    png = tmp_path / "sub" / "p.png"
    result = invoke("plot", consensus_run[0], dpsgd_run[0], "--out", png, "--title", "two runs")
    assert result.exit_code == 0, result.output
    assert_png(png)


def test_plot_against_bytes_sent(consensus_run, dpsgd_run, tmp_path):
    png = tmp_path / "bytes.png"
    result = invoke("plot", consensus_run[0], dpsgd_run[0], "--out", png, "--x", "bytes")
    assert result.exit_code == 0, result.output
    assert_png(png)
    assert_friendly_error(invoke("plot", dpsgd_run[0], "--out", png, "--x", "seconds"), "'seconds'", "round, bytes")


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize(("args", "words"), [
    (["--help"], ["simulate", "topology", "plot"]),
    (["simulate", "--help"], ["--topology", "--algorithm", "--partition", "--config", "--rounds", "--out"]),
    (["topology", "--help"], ["--nodes", "--weights", "--draw", "ring:16"]),
    (["plot", "--help"], ["--out", "metrics.jsonl"]),
])
def test_help(args, words):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for word in words:
        assert word in result.stdout, f"{word!r} missing from `gossipfl {' '.join(args)}`"


# ----------------------------------------------------------------------------- review regressions


def test_messages_with_brackets_are_printed_verbatim(tmp_path):
    """Paths and specs are user text: rich markup in them must neither vanish nor crash."""
    result = invoke("simulate", "--topology", "runs[/]x.toml")
    assert_friendly_error(result, "runs[/]x.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("edges = [[0, 1], [1, 5]]\n[[nodes]]\nid = 0\n[[nodes]]\nid = 1\n")
    line = assert_friendly_error(invoke("topology", bad))
    assert "5" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["simulate", "--nodes", "abc"], ["--nodes", "simulate --help"]),
        (["simulate", "--frobnicate"], ["--frobnicate"]),
        (["plot"], ["Missing argument"]),
    ],
)
def test_usage_errors_are_one_line_through_the_entry_point(monkeypatch, capsys, args, words):
    from gossipfl.cli import main

    monkeypatch.setattr(sys, "argv", ["gossipfl", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err)
    for word in words:
        assert word in line


@pytest.mark.parametrize(("key", "value"), [("topology", "16"), ("out", "5"), ("dataset", "1"), ("weights", "2")])
def test_wrong_types_in_a_config_file_are_one_line(tmp_path, key, value):
    path = tmp_path / "x.toml"
    path.write_text(f"{key} = {value}\n")
    assert_friendly_error(invoke("simulate", "--config", path), key, str(path))


def test_plot_skips_a_half_written_last_line_and_rejects_corrupt_ones(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = [{"round": r, "consensus_distance": 0.5**r} for r in range(5)]
    body = "".join(json.dumps(r) + "\n" for r in good)
    (run / "metrics.jsonl").write_text(body + '{"round": 5, "consen')  # killed mid-write
    result = invoke("plot", run, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_SIGNATURE)
    (run / "metrics.jsonl").write_text('{"round": 0, "consen\n' + body)
    assert_friendly_error(invoke("plot", run, "--out", tmp_path / "q.png"), "metrics.jsonl:1")


def test_unwritable_outputs_are_one_line(tmp_path):
    run = tmp_path / "run"
    assert invoke("simulate", "--algorithm", "consensus", "--topology", "ring:4", "--dim", 3,
                  "--rounds", 2, "--out", run).exit_code == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_friendly_error(invoke("plot", run, "--out", blocker / "p.png"), str(blocker))
    assert_friendly_error(invoke("topology", "ring:8", "--draw", tmp_path), str(tmp_path))


def test_plot_reports_the_file_it_actually_wrote(tmp_path):
    run = tmp_path / "run"
    assert invoke("simulate", "--algorithm", "consensus", "--topology", "ring:4", "--dim", 3,
                  "--rounds", 2, "--out", run).exit_code == 0
    result = invoke("plot", run, "--out", tmp_path / "noext")
    assert result.exit_code == 0
    assert (tmp_path / "noext.png").exists()
    assert "noext.png" in result.stdout


def test_diverged_run_writes_valid_json_with_nulls(tmp_path):
    run = tmp_path / "run"
    result = invoke("simulate", "--topology", "ring:4", "--dataset", SMALL_DATA, "--model", "logreg",
                    "--lr", "1e30", "--rounds", 6, "--eval-every", 3, "--out", run)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # strict JSON
    assert any(r["consensus_distance"] is None for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"] is True

