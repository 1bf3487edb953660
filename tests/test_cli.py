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


def test_a_refused_start_leaves_the_run_dir_as_it_was(run_cli, tmp_path):
    """Hydra writes .hydra/ before the job can check its config: a bad value in a new run dir leaves no
    directory behind, and a resume refused for another lr keeps the run dir's Hydra files of the config
    it ran (not the refused one)."""
    status, _, err = run_cli("logger=none", "trainer.epochs=0", f"hydra.run.dir={tmp_path / 'bad'}")
    assert status == cli.EXIT_CONFIG and not (tmp_path / "bad").exists()

    run = tmp_path / "run"
    common = ("logger=none", "algo=digital", "trainer.progress=off", "data.limit_train=80", "trainer.epochs=1",
              f"hydra.run.dir={run}")
    assert run_cli(*common, "trainer.lr=0.1")[0] == 0
    kept = (run / ".hydra" / "overrides.yaml").read_text()
    assert "trainer.lr=0.1" in kept
    status, _, err = run_cli(*common, "trainer.lr=0.3")
    assert status == cli.EXIT_CONFIG and "trainer.lr (0.1 -> 0.3)" in err
    assert (run / ".hydra" / "overrides.yaml").read_text() == kept
    assert "lr: 0.1" in (run / ".hydra" / "config.yaml").read_text()


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
