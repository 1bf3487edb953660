"""A real non-editable install: build the wheel, install it into a fresh venv, and run the installed CLI
from an unrelated directory -- it must find its configs (``analogtrain.conf``) without the source tree.

The venv borrows the already installed dependencies through a ``.pth`` line (no network, no 6 GB torch
copy); that line adds the dev venv's site-packages *after* the new venv's own, and without processing its
``.pth`` files, so the editable install of the checkout is invisible and ``analogtrain`` comes from the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, cli_env


@pytest.mark.slow
def test_wheel_install_runs_the_cli_with_packaged_configs(tmp_path):
    wheels = tmp_path / "wheels"
    b = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300,
                       env=cli_env(PIP_NO_INDEX="1"))
    assert b.returncode == 0, b.stderr[-3000:]
    (whl,) = wheels.glob("analogtrain-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("analogtrain/conf/train.yaml", "analogtrain/conf/model/mlp.yaml", "analogtrain/conf/data/digits.yaml",
              "analogtrain/conf/hydra/launcher/parallel.yaml", "analogtrain/conf/__init__.py", "analogtrain/cli.py"):
        assert f in names, f
    for src in (REPO / "csrc").rglob("*"):  # the kernel sources ship as package data
        if src.suffix in (".h", ".cuh", ".cpp", ".cu"):
            assert f"analogtrain/csrc/{src.relative_to(REPO / 'csrc').as_posix()}" in names, src
    assert not any(n.startswith(("tests/", "conf/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_deps_from_dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "-q", str(whl)],
                          capture_output=True, text=True, timeout=300, env=cli_env(PIP_NO_INDEX="1"))
    assert inst.returncode == 0, inst.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(vpy), "-c", "import analogtrain, analogtrain.conf as c; print(analogtrain.__file__);"
                            "print(c.__file__)"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and str(REPO) not in where, where

    exe = str(venv / "bin" / "analogtrain")
    job = subprocess.run([exe, "--cfg", "job", "model=lenet"], cwd=work, env=cli_env(), capture_output=True,
                         text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: lenet" in job.stdout and "name: digits" in job.stdout
    run = subprocess.run([exe, "logger=none", "trainer.epochs=1", "data.limit_train=64", "model.hidden_sizes=[8]",
                          "trainer.progress=off", "hydra.run.dir=run"], cwd=work, env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "run" / "artifacts" / "summary.json").is_file()
    bad = subprocess.run([exe, "model=nope"], cwd=work, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "model=nope: unknown option" in bad.stderr
