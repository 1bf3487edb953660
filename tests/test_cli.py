"""The ``analogtrain`` command: help/--cfg, one-line errors with exit status 2 before any work, NaN -> 1."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ANALOGTRAIN, cli_env

from analogtrain import cli


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """Run ``analogtrain <args>`` in-process in an empty directory; returns (status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        try:
            status = cli.main(list(args))
        except SystemExit as e:  # --help exits through sys.exit
            status = e.code or 0
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("analogtrain: error: ")
    return lines[0][len("analogtrain: error: "):]


@pytest.mark.parametrize(("args", "expected"), [
    (["trainer.nope=1"], ["trainer.nope: unknown key", "allowed keys:", "epochs", "lr_schedule"]),
    (["trainer.epochs=abc"], ["trainer.epochs", "'abc'", "int"]),
    (["trainer.epochs=0"], ["trainer.epochs: 0 is out of range: allowed 1 <= epochs"]),
    (["model=transformer"], ["model=transformer: unknown option; choose one of", "lenet", "mlp", "swin"]),
    (["data=mnist", "data.root=nowhere"], ["data.root: data set 'mnist' not found", "train-images-idx3-ubyte",
                                           "nowhere/MNIST/raw", "data.download=true"]),
    (["+trainer.foo=1"], ["trainer.foo: unknown key"]),
    (["trainer.lr_schedule=exp"], ["trainer.lr_schedule", "none, step, cosine"]),
])
def test_bad_input_is_one_line_naming_the_key_exit_2(run_cli, tmp_path, args, expected):
    status, _, err = run_cli("logger=none", *args)
    assert status == cli.EXIT_CONFIG
    line = _error_line(err)
    for piece in expected:
        assert piece in line, (piece, line)
    # failed before any work: no checkpoint was written anywhere
    assert not list(tmp_path.rglob("last.pt"))


def test_cfg_job_prints_composed_config(run_cli):
    status, out, _ = run_cli("--cfg", "job", "model=lenet", "trainer.lr=0.05")
    assert status == 0
    assert "name: lenet" in out and "lr: 0.05" in out and "tile:" in out and "hydra:" not in out


def test_help_lists_groups(run_cli):
    status, out, _ = run_cli("--help")
    assert status == 0
    for g in ("algo:", "device:", "model:", "data:", "trainer:", "logger:", "experiment:", "sweep:"):
        assert g in out


def test_diverging_loss_exits_1_with_clear_message(run_cli):
    status, _, err = run_cli("logger=none", "experiment=least_squares", "trainer.lr=5", "trainer.epochs=3",
                             "trainer.progress=off")
    assert status == cli.EXIT_FAILED
    line = _error_line("\n".join(ln for ln in err.splitlines() if ln.startswith("analogtrain: error")))
    assert "train/loss became" in line and "lower trainer.lr" in line


def test_console_script_exit_status(tmp_path):
    """The installed entry point returns the status to the shell (not just main())."""
    p = subprocess.run([ANALOGTRAIN, "logger=none", "trainer.epochs=-3"], cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == \
        "analogtrain: error: trainer.epochs: -3 is out of range: allowed 1 <= epochs"
