"""The CPU kernel's portable paths, built and tested on any CI machine.

Which update path runs depends on the CPU the kernel is built for:
- AVX-512 F/DQ/VPOPCNTDQ and glibc (>= 2.35)'s libmvec: the fast paths of ``csrc/cpu_fused_avx512.h``
  (``cpu_fast_paths() == 1``);
- AVX2 and libmvec, no AVX-512 (many laptops and cloud CPUs): the 8-lane fused path of
  ``csrc/cpu_fused_avx2.h`` for the exact pulsed mode and the aggregated one-sample calls
  (``cpu_fast_paths() == 2``);
- every machine: the aggregated batches on the 8-lane vectors of ``csrc/cpu_agg_lanes.h`` where no
  AVX-512 path is built, everything else on the generic job path (``cpu_fast_paths() == 0``).
``ANALOGTRAIN_KERNEL_PATHS=portable`` builds the kernel without the AVX-512 paths and ``=generic``
without any fast path (each its own cache entry). These tests run the compiled-vs-reference parity
suites against those builds in a subprocess, so the code other machines run is tested here too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from analogtrain import ops
from analogtrain.ops import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_SUITES = ["tests/test_kernel.py", "tests/test_aggregated_pulses.py", "tests/test_chopped_op.py",
                 "tests/test_chopped_carry.py", "tests/test_transfer_op.py",
                 "tests/test_io_speed_invariance.py", "tests/test_cuda_emulation.py"]


def _has_libmvec_float() -> bool:
    libc, ver = platform.libc_ver()
    return libc == "glibc" and tuple(int(p) for p in ver.split(".")[:2]) >= (2, 35)


def expected_fast_paths(paths: str) -> int:
    """cpu_fast_paths() of a build with ANALOGTRAIN_KERNEL_PATHS=paths on this machine."""
    flags = build._cpu_fingerprint().split()
    mvec = bool(build._libmvec_flags()[0])
    if paths == "generic" or not mvec:
        return 0
    if paths == "auto" and all(f in flags for f in ("avx512f", "avx512dq", "avx512_vpopcntdq")) \
            and _has_libmvec_float():
        return 1
    return 2 if "avx2" in flags else 0


def _build_and_probe(env: dict) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; from analogtrain.ops import build; build.build_cpu(); "
                               "print(torch.ops.analogtrain.cpu_fast_paths())"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return int(probe.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.compiled
@pytest.mark.parametrize("paths", ["generic", "portable"])
def test_restricted_kernel_build_passes_the_parity_suites(paths):
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel on this machine")
    want = expected_fast_paths(paths)
    if paths == "portable" and want == expected_fast_paths("auto"):
        pytest.skip("this machine's own build already is the portable one (the parity suites run on it)")
    env = dict(os.environ, **{build.KERNEL_PATHS_ENV: paths, "OMP_NUM_THREADS": "1"})
    assert _build_and_probe(env) == want, f"the {paths} build reports other fast paths than its flags allow"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda and not slow",
         *PARITY_SUITES],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_fast_paths_flag_matches_the_build_flags():
    """This process's kernel reports the fast paths its CPU and ANALOGTRAIN_KERNEL_PATHS allow: 1 with
    AVX-512 F/DQ/VPOPCNTDQ and glibc >= 2.35's libmvec, 2 with AVX2 and libmvec, else 0."""
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel on this machine")
    paths = os.environ.get(build.KERNEL_PATHS_ENV, "").strip().lower() or "auto"
    assert int(torch.ops.analogtrain.cpu_fast_paths()) == expected_fast_paths(paths)


def test_unknown_kernel_paths_value_is_refused(monkeypatch):
    monkeypatch.setenv(build.KERNEL_PATHS_ENV, "turbo")
    with pytest.raises(build.BuildError, match="ANALOGTRAIN_KERNEL_PATHS"):
        build._path_flags()
