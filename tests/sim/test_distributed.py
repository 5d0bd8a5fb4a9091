"""One simulation spanning two JAX processes on 127.0.0.1 gives the single-process result, and
only process 0 writes the run; the multi-process options are checked before anything starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gossipfl.cli import app


def _has_cpu_collectives() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


needs_collectives = pytest.mark.skipif(not _has_cpu_collectives(),
                                       reason="this jaxlib has no gloo CPU collectives across processes")

RUNS = {  # name: simulate flags
    "consensus": ["-a", "consensus", "-t", "ring:8", "-r", "50"],
    "dpsgd": ["-a", "dpsgd", "--model", "logreg", "-t", "ring:8", "-r", "30"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _simulate(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gossipfl", "simulate", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_processes(args: list[str]) -> list[tuple[int, str]]:
    """Runs `gossipfl simulate args` as processes 0 and 1 of one run, 2 CPU devices each."""
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [_simulate([*args, "--coordinator", coordinator, "--process-id", str(i), "--num-processes", "2"],
                       _env(2)) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            p.kill()


def _read(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@needs_collectives
@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_processes_give_the_single_process_result(tmp_path: Path, name: str) -> None:
    one = _simulate([*RUNS[name], "-o", str(tmp_path / "one")], _env(1))
    out, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out
    results = _two_processes([*RUNS[name], "-o", str(tmp_path / "two")])
    for rc, out in results:
        assert rc == 0, out
    assert "process 1 of 2 done" in results[1][1] and "wrote" in results[0][1]

    (s1, r1), (s2, r2) = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert (tmp_path / "two" / "plot.png").exists()
    assert s1["devices"] == 1 and s2["devices"] == 4  # 2 processes x 2 devices, 2 nodes each
    assert s2["final"].keys() == s1["final"].keys()
    for key, value in s1["final"].items():
        assert s2["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    if name == "dpsgd":
        assert "accuracy" in s2["final"]
    assert [r["round"] for r in r2] == [r["round"] for r in r1]
    for a, b in zip(r1, r2, strict=True):
        assert b.keys() == a.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["round"], key)


@needs_collectives
def test_nodes_that_do_not_split_over_the_processes_are_an_error(tmp_path: Path) -> None:
    for rc, out in _two_processes(["-a", "consensus", "-t", "ring:7", "-r", "2", "-o", str(tmp_path)]):
        assert rc == 2 and "7 nodes do not split evenly over 2 processes" in out, out


@pytest.mark.parametrize(("flags", "message"), [
    (["--coordinator", "127.0.0.1:1234"], "--coordinator needs --process-id and --num-processes"),
    (["--process-id", "0", "--num-processes", "2"], "needs --coordinator"),
    (["--coordinator", "127.0.0.1:1234", "--process-id", "2", "--num-processes", "2"], "out of range"),
    (["--coordinator", "127.0.0.1:1234", "--process-id", "-1", "--num-processes", "2"], "out of range"),
    (["--coordinator", "localhost", "--process-id", "0", "--num-processes", "2"], "is not HOST:PORT"),
    (["--coordinator", "127.0.0.1:0", "--process-id", "0", "--num-processes", "2"], "is not HOST:PORT"),
])
def test_bad_multi_process_options_are_one_error_line(tmp_path: Path, flags: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["simulate", "-a", "consensus", "-t", "ring:4", "-r", "1",
                                      "-o", str(tmp_path), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "summary.json").exists()
