// What the CUDA sources (cuda_kernels.cu, cuda_ops.cpp) take from the CUDA toolkit, in one place, so that
// the same sources also build for the CPU emulation (cuda_emulation.cpp, -DANALOGTRAIN_CUDA_EMULATION):
// there a launch runs every thread of the grid one after the other on the calling CPU thread, with
// threadIdx / blockIdx / blockDim / gridDim set as the GPU would set them. The kernels share no memory
// between threads and never synchronise inside a block (their only cross-thread write is one atomicAdd
// per thread), so running the threads in sequence gives what any GPU schedule gives, and the emulation
// checks the kernels' indexing, loops and control flow without a GPU (tests/test_cuda_emulation.py).
// Under nvcc, AT_LAUNCH is the plain <<<grid, block, 0, stream>>> launch.
#pragma once

#if defined(ANALOGTRAIN_CUDA_EMULATION)

#include <cstdint>

#define __global__
using cudaStream_t = void*;

namespace analogtrain {
namespace cuda_emu {
struct Dim {
  unsigned x = 0;
};
inline thread_local Dim threadIdx, blockIdx, blockDim, gridDim;

inline int __popc(uint32_t v) { return __builtin_popcount(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}

// kernel(args...) for every (block, thread) of a grid × block launch, in order.
template <class Kernel, class... Args>
void launch(Kernel kernel, unsigned grid, unsigned block, Args... args) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    for (unsigned t = 0; t < block; ++t) {
      threadIdx.x = t;
      kernel(args...);
    }
  }
}
}  // namespace cuda_emu
}  // namespace analogtrain

#define AT_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), ::analogtrain::cuda_emu::launch(kernel, static_cast<unsigned>(grid), static_cast<unsigned>(block), __VA_ARGS__))

#else

#include <cuda_runtime.h>

#define AT_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)

#endif
