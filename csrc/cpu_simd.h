// Which SIMD fast paths this build of the CPU kernel has: decided by the compiler's target (-march=native
// in analogtrain/ops/build.py), build.py's libmvec flag (ANALOGTRAIN_LIBMVEC), the glibc version, and
// ANALOGTRAIN_KERNEL_PATHS (=generic: ANALOGTRAIN_GENERIC_ONLY, =portable: ANALOGTRAIN_NO_AVX512).
#pragma once

// glibc >= 2.35 has libmvec's float variants (log1pf, expf, ...: the AVX-512 path's and the AVX2 lanes')
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#define AT_LIBMVEC_FLOAT 1
#else
#define AT_LIBMVEC_FLOAT 0
#endif

// The AVX-512 fast paths (cpu_fused_avx512.h, cpu_expm1.h): AVX-512 F/DQ/VPOPCNTDQ and libmvec's float
// variants.
#if defined(ANALOGTRAIN_LIBMVEC) && defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__) && \
    defined(__AVX512DQ__) && !defined(ANALOGTRAIN_GENERIC_ONLY) && !defined(ANALOGTRAIN_NO_AVX512) && AT_LIBMVEC_FLOAT
#define AT_FUSED_AVX512 1
#else
#define AT_FUSED_AVX512 0
#endif
