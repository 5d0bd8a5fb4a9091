"""The public API: every exported name imports, and the CLI starts without loading JAX."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gossipfl


def test_every_public_name_resolves() -> None:
    assert len(gossipfl.__all__) == len(set(gossipfl.__all__))
    for name in gossipfl.__all__:
        assert getattr(gossipfl, name) is not None, name
    assert set(gossipfl.__all__) <= set(dir(gossipfl))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'mix_everything'"):
        gossipfl.mix_everything  # noqa: B018


def test_cli_help_does_not_import_jax() -> None:
    """`gossipfl --help` must stay fast: the package imports JAX only when a command needs it."""
    code = "import sys, gossipfl.cli; print('jax' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_launch_and_plot_modules_do_not_import_jax() -> None:
    """`gossipfl launch` waits on child processes: it must not hold a JAX runtime while it does."""
    code = ("import sys, gossipfl.net.network, gossipfl.net.launch, gossipfl.net.collect, gossipfl.plot, "
            "gossipfl.net.auth; "
            "print('jax' in sys.modules, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_layout_has_no_import_cycle_and_the_simulator_imports_no_networking(tmp_path):
    """The package's imports flow one way, and `gossipfl simulate` (with its plot) loads neither
    gossipfl.net nor trio."""
    import subprocess
    import sys

    code = ("import sys; from gossipfl.cli import main; sys.argv = ['gossipfl', 'simulate', '--algorithm', "
            f"'consensus', '--rounds', '3', '--out', {str(tmp_path / 'run')!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('gossipfl.net', 'trio')))\n"
            "print('LOADED', bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "LOADED []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "run" / "plot.png").is_file()
