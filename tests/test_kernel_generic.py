"""The CPU kernel's generic path, built and tested on its own.

On a machine with AVX-512 F/DQ/VPOPCNTDQ and glibc (>= 2.35)'s libmvec, the pulsed and aggregated
updates run on the fast paths of ``csrc/cpu_fused_avx512.h``; every other machine (most laptops) runs
the portable paths: the aggregated update of a batch on the 8-lane vectors of ``csrc/cpu_agg_lanes.h``,
everything else on the generic job path. ``ANALOGTRAIN_KERNEL_PATHS=generic`` builds the kernel without
the AVX-512 paths (its own cache entry), and this test runs the compiled-vs-reference parity suites
against that build in a subprocess, so the code users without AVX-512 get is tested on any CI machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from analogtrain import ops
from analogtrain.ops import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.compiled
def test_generic_only_kernel_passes_the_parity_suites():
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel on this machine")
    env = dict(os.environ, **{build.KERNEL_PATHS_ENV: "generic", "OMP_NUM_THREADS": "1"})
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; from analogtrain.ops import build; build.build_cpu(); "
                               "print(torch.ops.analogtrain.cpu_fast_paths())"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == "0", "the generic build still has the fast paths"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda and not slow",
         "tests/test_kernel.py", "tests/test_aggregated_pulses.py", "tests/test_chopped_op.py",
         "tests/test_chopped_carry.py",
         "tests/test_transfer_op.py"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_fast_paths_flag_matches_the_build_flags():
    """This process's kernel reports whether the fast paths are in (they are wherever the CPU has
    AVX-512 F/DQ/VPOPCNTDQ and libmvec, unless ANALOGTRAIN_KERNEL_PATHS=generic)."""
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel on this machine")
    import platform

    flags = build._cpu_fingerprint().split()
    fast_cpu = all(f in flags for f in ("avx512f", "avx512dq", "avx512_vpopcntdq"))
    libc, ver = platform.libc_ver()
    new_glibc = libc == "glibc" and tuple(int(p) for p in ver.split(".")[:2]) >= (2, 35)  # float libmvec
    want = int(fast_cpu and new_glibc and bool(build._libmvec_flags()[0])
               and os.environ.get(build.KERNEL_PATHS_ENV, "").strip().lower() != "generic")
    assert int(torch.ops.analogtrain.cpu_fast_paths()) == want


def test_unknown_kernel_paths_value_is_refused(monkeypatch):
    monkeypatch.setenv(build.KERNEL_PATHS_ENV, "turbo")
    with pytest.raises(build.BuildError, match="ANALOGTRAIN_KERNEL_PATHS"):
        build._path_flags()
