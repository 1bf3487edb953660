"""CUDA kernel: nvcc compile check (no GPU needed, marked slow) and CPU/GPU parity (marked cuda; skipped
cleanly without a GPU). Parity means: for the same seed and offset the CUDA kernel produces the same
pulse counts as the CPU kernel and the torch reference, and the same weights up to float rounding of
exp/pow (both kernels compile without FMA contraction and share csrc/device_step.h and csrc/philox.h)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config, sample_device
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops.reference import pulsed_update_ref
from kernel_cases import UPDATE_DEVICES, update_case

NVCC = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"


@pytest.mark.slow
@pytest.mark.skipif(not NVCC.exists() and shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Build csrc/cuda_kernels.cu + cuda_ops.cpp into a .so for sm_90 with nvcc (JIT cpp_extension.load);
    runs in a subprocess with its own extension cache so the build is real, not a cached load."""
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.0", CUDA_HOME=os.environ.get("CUDA_HOME", "/usr/local/cuda"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), MAX_JOBS="2", OMP_NUM_THREADS="1")
    code = textwrap.dedent("""
        import glob, os
        from analogtrain.ops import build
        name = build.build_cuda(force=True)
        sos = glob.glob(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "**", name + ".so"), recursive=True)
        assert sos, "no shared object produced"
        print("BUILT", name, os.path.getsize(sos[0]))
    """)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "BUILT analogtrain_cuda_" in r.stdout


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def cuda_kernel():
    from analogtrain.ops import build

    build.build_cuda()
    return torch.ops.analogtrain


DEVICES = UPDATE_DEVICES
_case = update_case


def _run(s, x, d, w0, spec, device, backend, lr=0.05, chop=False):
    w = w0.clone().to(device)
    wp = w0.clone().to(device) if s.write_noise else None
    O, I = w0.shape
    g = torch.Generator().manual_seed(9)
    ci = torch.where(torch.rand(I, generator=g) < 0.5, -1.0, 1.0).to(device) if chop else None
    co = torch.where(torch.rand(O, generator=g) < 0.5, -1.0, 1.0).to(device) if chop else None
    args = (w, wp, s.params.to(device), s.gparams, x.to(device), d.to(device), lr, s.dw, spec, 2**35 + 3, 17)
    if backend == "reference":
        n = pulsed_update_ref(*args, chop_in=ci, chop_out=co)
    else:
        n = ops.pulsed_update(*args, chop_in=ci, chop_out=co, backend="compiled")
    return n.cpu(), w.cpu(), None if wp is None else wp.cpu()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("key", DEVICES)
@pytest.mark.parametrize("mode", [MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED])
def test_cpu_kernel_equals_cuda_kernel(cuda_kernel, key, mode):
    s, x, d, w0 = _case(key)
    for spec in (UpdateSpec(mode=mode), UpdateSpec(mode=mode, ublm=False, desired_bl=40),
                 UpdateSpec(mode=mode, ublm=False, um=False, res=0.05, sto_round=True)):
        cpu = _run(s, x, d, w0, spec, "cpu", "compiled", chop=True)
        gpu = _run(s, x, d, w0, spec, "cuda", "compiled", chop=True)
        assert torch.equal(cpu[0], gpu[0]), "pulse counts differ between CPU and GPU"
        torch.testing.assert_close(gpu[1], cpu[1], rtol=0, atol=1e-6)
        if cpu[2] is not None:
            torch.testing.assert_close(gpu[2], cpu[2], rtol=0, atol=1e-6)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("key", ["softbounds", "expstep", "reram_sb"])
def test_reference_equals_cuda_kernel(cuda_kernel, key):
    s, x, d, w0 = _case(key, O=24, I=20, B=6)
    ref = _run(s, x, d, w0, UpdateSpec(), "cpu", "reference")
    gpu = _run(s, x, d, w0, UpdateSpec(), "cuda", "compiled")
    assert torch.equal(ref[0], gpu[0])
    torch.testing.assert_close(gpu[1], ref[1], rtol=0, atol=1e-6)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("columns", [True, False])
def test_transfer_cpu_equals_cuda(cuda_kernel, columns):
    s = sample_device(device_from_config({"name": "softbounds"}), 32, 24, 2)
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(32, 24, generator=g)
    outs = {}
    for dev in ("cpu", "cuda"):
        h, c = h0.clone().to(dev), torch.zeros(32, 24, device=dev)
        gg = torch.Generator().manual_seed(1)
        ns = []
        for r in range(10):
            L = 32 if columns else 24
            v = (torch.randn(L, generator=gg) * 0.05).to(dev)
            chop = torch.where(torch.rand(L, generator=gg) < 0.5, -1.0, 1.0).to(dev)
            n, _ = ops.buffered_transfer(h, v, r % (24 if columns else 32), lr_scale=25.0, thr=1.0, bl=1,
                                         momentum=0.1, forget=True, w=c, w_p=None, params=s.params.to(dev),
                                         gparams=s.gparams, lr=s.dw, dw=s.dw,
                                         spec=UpdateSpec(desired_bl=1, ublm=False, um=False), seed=4, offset=r,
                                         chop=chop, columns=columns, backend="compiled")
            ns.append(n.cpu())
        outs[dev] = (torch.stack(ns), h.cpu(), c.cpu())
    assert torch.equal(outs["cpu"][0], outs["cuda"][0])
    torch.testing.assert_close(outs["cuda"][1], outs["cpu"][1], rtol=0, atol=0)
    torch.testing.assert_close(outs["cuda"][2], outs["cpu"][2], rtol=0, atol=1e-6)
