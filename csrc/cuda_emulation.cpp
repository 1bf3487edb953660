// The CUDA kernels and their torch glue built for the CPU (analogtrain.ops.build.build_cuda_emulation):
// cuda_kernels.cu and cuda_ops.cpp, unchanged, in one C++ translation unit with
// ANALOGTRAIN_CUDA_EMULATION defined (cuda_compat.h: each launch runs its grid's threads in sequence).
// The ops land in namespace `analogtrain_cuda_emu` and take CPU tensors. They run the kernels' own loops,
// indexing and control flow with the host's maths (glibc, not CUDA's device libm), so on any machine
// tests/test_cuda_emulation.py can hold them to the CPU kernel bit for bit.
#define ANALOGTRAIN_CUDA_EMULATION 1

// First, as in cpu_ops.cpp: the CPU kernel's choice of host log1p/expm1 for device_step.h (an ulp apart
// across libms), so that samples of more than AGG_POLY_MAX pulses also agree with the CPU kernel bit for
// bit. (On a GPU they are CUDA's log1pf/expm1f: equal to float rounding, the parity tests' tolerance.)
#include "cpu_agg_lanes.h"

#include "cuda_kernels.cu"
#include "cuda_ops.cpp"
