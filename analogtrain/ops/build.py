"""JIT build of the compiled tile kernels in ``csrc/`` (``torch.utils.cpp_extension.load``, cached).

Never runs inside ``pip install``: a training run builds it before its first step
(``analogtrain.ops.prepare_kernel``, logged at INFO with the time it took, so the build never counts as
training time), elsewhere the first op call that wants the compiled backend does. Once per machine
(about 30–60 s for the CPU kernel on 2 cores, 60–120 s for CUDA) into
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) under a name that hashes the sources,
the flags, the torch version and the CPU, so a changed source or another machine never reuses a stale
binary; later processes just load the cached library (~0.1 s).

Two libraries, both registering into the torch op namespace ``analogtrain`` (``torch.ops.analogtrain``):

* ``analogtrain_cpu_<hash>``: op schemas + CPU kernels (``cpu_ops.cpp``, OpenMP, ``-O3``); built
  wherever a C++ compiler exists.
* ``analogtrain_cuda_<hash>``: CUDA kernels (``cuda_ops.cpp`` + ``cuda_kernels.cu``); built only when
  ``torch.cuda.is_available()`` (or on request: ``build_cuda(force=True)``, the nvcc compile check).

A third, a test instrument that training never loads: ``analogtrain_cuda_emu_<hash>``, the same CUDA
sources built by the host compiler with each launch run thread by thread on the CPU
(``csrc/cuda_emulation.cpp``), as the ops ``torch.ops.analogtrain_cuda_emu.*`` on CPU tensors
(``build_cuda_emulation``; tests/test_cuda_emulation.py).

Sources are found in the installed package (``analogtrain.csrc``, the wheel maps top-level ``csrc/``
there) or, in a source checkout, in the repository's ``csrc/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import time
from pathlib import Path

__all__ = ["csrc_dir", "build_cpu", "build_cuda", "build_cuda_emulation", "build_name", "cached_library",
           "BuildError", "CPU_SOURCES", "CUDA_SOURCES", "CUDA_EMULATION_SOURCES"]

CPU_SOURCES = ("cpu_ops.cpp",)
CUDA_SOURCES = ("cuda_ops.cpp", "cuda_kernels.cu")
# the CPU emulation of the CUDA kernels: one translation unit that includes both CUDA sources (hashed with it)
CUDA_EMULATION_SOURCES = ("cuda_emulation.cpp",)
HEADERS = ("philox.h", "device_step.h", "pulsed_update.h", "cpu_fused_avx512.h", "cpu_fused_avx2.h",
           "cpu_agg_lanes.h", "cpu_expm1.h", "cpu_simd.h", "cuda_compat.h", "op_schemas.h")

# -ffp-contract=off / --fmad=false: no fused multiply-add, so every float operation rounds exactly as
# the torch reference does (bit-identical deterministic paths, see devices/step.py).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--fmad=false"]

_lock = threading.Lock()
_loaded: dict[str, str] = {}
_log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The compiled kernel could not be built or loaded (message says why)."""


def csrc_dir() -> Path:
    """Directory holding the kernel sources: the installed package data ``analogtrain/csrc`` (wheel), else
    the checkout's top-level ``csrc/`` (source tree / editable install)."""
    pkg = Path(__file__).resolve().parents[1]  # .../analogtrain
    candidates = [pkg / "csrc", pkg.parent / "csrc"]
    try:  # an installer that placed the package data elsewhere (namespace package analogtrain.csrc)
        from importlib import resources

        t = resources.files("analogtrain.csrc").joinpath(CPU_SOURCES[0])
        candidates.insert(1, Path(str(t)).parent)
    except Exception:  # noqa: BLE001 - not importable: the checkout's csrc/ is used
        pass
    for p in candidates:
        if (p / CPU_SOURCES[0]).is_file():
            return p
    raise BuildError("kernel sources not found: none of " + ", ".join(str(c) for c in candidates)
                     + f" holds {CPU_SOURCES[0]}")


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _libmvec_flags() -> tuple[list[str], list[str]]:
    """(cflags, ldflags) for glibc's vector math library (vectorised Box–Muller), when it is installed."""
    import ctypes.util

    if platform.system() == "Linux" and platform.machine() == "x86_64" and ctypes.util.find_library("mvec"):
        return ["-DANALOGTRAIN_LIBMVEC"], ["-lmvec"]
    return [], []


# ANALOGTRAIN_KERNEL_PATHS selects which CPU paths a build has, so CI on one machine can test the code
# other machines run: ``generic`` leaves out every fast path (AVX-512 and AVX2: the generic job path and
# the portable aggregated lanes remain), ``portable`` leaves out only the AVX-512 ones (what a CPU with
# AVX2 but no AVX-512 runs); ``auto`` (or unset) builds everything the CPU supports.
KERNEL_PATHS_ENV = "ANALOGTRAIN_KERNEL_PATHS"
KERNEL_PATHS = {"auto": [], "generic": ["-DANALOGTRAIN_GENERIC_ONLY"], "portable": ["-DANALOGTRAIN_NO_AVX512"]}


def _path_flags() -> list[str]:
    """The -D flags of ``ANALOGTRAIN_KERNEL_PATHS`` (part of the cache name); unknown values refused."""
    v = os.environ.get(KERNEL_PATHS_ENV, "").strip().lower() or "auto"
    if v not in KERNEL_PATHS:
        raise BuildError(f"{KERNEL_PATHS_ENV}='{v}' is not allowed; choose one of {', '.join(KERNEL_PATHS)}")
    return list(KERNEL_PATHS[v])


def _march_flags() -> list[str]:
    """-march=native on x86/arm with gcc/clang (the cache name includes the CPU fingerprint)."""
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        return ["-march=native"]
    return []


def build_name(kind: str, sources: tuple[str, ...], flags: list[str]) -> str:
    """``analogtrain_<kind>_<hash>``: hash of the sources, headers, flags, torch version and CPU."""
    import torch

    h = hashlib.sha256()
    d = csrc_dir()
    included = CUDA_SOURCES if kind == "cuda_emu" else ()  # (what cuda_emulation.cpp includes)
    for name in sorted(set(sources) | set(HEADERS) | set(included)):
        h.update(name.encode())
        h.update((d / name).read_bytes())
    h.update(" ".join(flags).encode())
    h.update(torch.__version__.encode())
    h.update(_cpu_fingerprint().encode())
    return f"analogtrain_{kind}_{h.hexdigest()[:12]}"


def _load(kind: str, sources: tuple[str, ...], verbose: bool, **kw) -> str:
    if Path("/usr/local/cuda/bin/nvcc").exists():  # before cpp_extension derives a wrong CUDA_HOME
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    import logging

    # cpp_extension logs "No CUDA runtime is found" at import on CPU-only machines: not news here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    d = csrc_dir()
    mvec_c, mvec_l = _libmvec_flags()
    flags = CXX_FLAGS + _march_flags() + mvec_c + (_path_flags() if kind in ("cpu", "cuda_emu") else [])
    name = build_name(kind, sources, flags + mvec_l + kw.get("extra_cuda_cflags", []))
    if name in _loaded:
        return name
    for other, other_kind in _loaded.items():
        # One library per kind and process: both builds register the same `analogtrain::` op names,
        # and a second registration aborts the process. Sources edited under a running process keep
        # the library already loaded until the next process.
        if other_kind == kind:
            return other
    os.environ.setdefault("MAX_JOBS", "2")  # 2 shared cores
    lib = cached_library(name)
    if lib is None:  # a compile of tens of seconds: say so, or the run looks hung before its first step
        took = {"cpu": "about 30–60 s on 2 cores", "cuda_emu": "about 20 s"}.get(kind, "one to two minutes")
        _log.info("building the compiled %s kernel %s (once for these sources, flags and CPU; %s) ...", kind,
                  name, took)
    t0 = time.perf_counter()
    try:
        cpp_extension.load(
            name=name,
            sources=[str(d / s) for s in sources],
            extra_cflags=flags,
            extra_ldflags=LD_FLAGS + mvec_l,
            extra_include_paths=[str(d)],
            is_python_module=False,
            verbose=verbose,
            **kw,
        )
    except Exception as e:  # noqa: BLE001 - compiler missing, compile error, load error
        raise BuildError(f"building the {kind} kernel '{name}' failed: {type(e).__name__}: {e}") from e
    if lib is None:
        _log.info("built %s in %.0f s (cached in %s)", name, time.perf_counter() - t0,
                  cached_library(name) or "the torch extensions directory")
    _loaded[name] = kind
    return name


def cached_library(name: str) -> Path | None:
    """The built library ``name`` in torch's extension cache (``$TORCH_EXTENSIONS_DIR/<name>/<name>.so``,
    by default under ``~/.cache/torch_extensions/<python>_<cuda|cpu>/``), or None when it is not there
    yet (the next load compiles). The name hashes the sources and flags, so a library found under it
    is current."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # (private: where load() builds)

        lib = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
    except Exception:  # noqa: BLE001 - another torch layout: treated as not cached (only a log line differs)
        return None
    return lib if lib.is_file() else None


def _require_cxx() -> None:
    """BuildError unless a host C++ compiler (``$CXX``, c++ or g++) is on PATH."""
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise BuildError("no C++ compiler found (c++/g++ not on PATH; set CXX)")


def build_cpu(verbose: bool = False) -> str:
    """Build (or load the cached) CPU kernel library; returns its name. Raises ``BuildError``."""
    with _lock:
        _require_cxx()
        return _load("cpu", CPU_SOURCES, verbose)


def _cuda_env() -> None:
    """CUDA_HOME and TORCH_CUDA_ARCH_LIST defaults (environment.md §6): torch would otherwise derive
    CUDA_HOME=/usr/local from the nvcc wrapper, and crash on an empty arch list without a GPU."""
    if Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"


def build_cuda(verbose: bool = False, force: bool = False) -> str:
    """Build (or load the cached) CUDA kernel library (needs the CPU library's op schemas, so it is
    built first). Without a GPU only with ``force=True`` (the nvcc compile check). Raises ``BuildError``."""
    import torch

    if not (force or torch.cuda.is_available()):
        raise BuildError("no CUDA device: the CUDA kernel is built only where torch.cuda.is_available()")
    build_cpu(verbose)
    with _lock:
        _cuda_env()
        return _load("cuda", CUDA_SOURCES, verbose, extra_cuda_cflags=NVCC_FLAGS)


def build_cuda_emulation(verbose: bool = False) -> str:
    """Build (or load the cached) CPU emulation of the CUDA kernels (``csrc/cuda_emulation.cpp``): the
    CUDA sources compiled by the host compiler, each launch running its threads in sequence, as the ops
    ``torch.ops.analogtrain_cuda_emu.{pulsed_update, buffered_transfer, chopped_update_snapshots}`` on CPU
    tensors. A test instrument (tests/test_cuda_emulation.py: the kernels' logic against the CPU kernel
    without a GPU); training never loads it. Raises ``BuildError``."""
    with _lock:
        _require_cxx()
        return _load("cuda_emu", CUDA_EMULATION_SOURCES, verbose)
