// Copyright (c) dualformer-mm contributors.
// Host stand-ins for the CUDA device API that dualformer_mm/ops/csrc/cuda/partition_kernels.cuh
// uses, so that its kernel bodies compile with a C++ compiler and run on the CPU. Test code:
// tests/cuda_emulation/emulated_ops.cpp includes it before the kernels.
//
// The threads of a grid run one after another (emulated_ops.cpp). That is exact for these
// kernels: no kernel uses __shared__ memory, __syncthreads or a warp intrinsic, so threads meet
// only through atomics, which one thread at a time can do as plain read-modify-writes. This
// shim deliberately defines none of __shared__, __syncthreads or __shfl_*: a kernel that starts
// to use one no longer compiles here, and its emulation must then run each block's threads
// phase by phase (or on real threads) instead.
#pragma once

// The torch headers come first: the keyword macros below must not reach them.
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <math.h>  // C++'s <math.h> puts the float overloads of exp/log in the global namespace

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

// ::exp(float) must be the float function, as in device code (not exp(double) rounded).
static_assert(std::is_same_v<decltype(::exp(1.0f)), float>, "::exp(float) must return float");
using std::signbit;

namespace dualformer_emulation {
struct Dim3 {
  unsigned int x, y, z;
};
}  // namespace dualformer_emulation

// Set by the emulated launch before each thread runs; thread_local so that grids could also
// run on several host threads.
inline thread_local dualformer_emulation::Dim3 blockIdx{0, 0, 0};
inline thread_local dualformer_emulation::Dim3 threadIdx{0, 0, 0};
inline thread_local dualformer_emulation::Dim3 blockDim{1, 1, 1};
inline thread_local dualformer_emulation::Dim3 gridDim{1, 1, 1};

// A failed device assert raises at once (with the block and thread) instead of aborting the
// process, so a test can expect it. On a GPU it surfaces at the next synchronisation.
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond)                                                       \
  TORCH_CHECK((cond), "CUDA_KERNEL_ASSERT failed: " #cond " (block ", blockIdx.x,      \
              ", thread ", threadIdx.x, ")")

namespace dualformer_emulation {
template <typename To, typename From>
inline To bit_cast(From value) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To out;
  std::memcpy(&out, &value, sizeof(To));
  return out;
}

// Through memcpy: the kernels reinterpret float buffers as integers, which host C++'s aliasing
// rules would let the optimiser reorder.
template <typename T, typename Op>
inline T atomic_update(T* address, T value, Op op) {
  T old;
  std::memcpy(&old, address, sizeof(T));
  const T updated = op(old, value);
  std::memcpy(address, &updated, sizeof(T));
  return old;
}
}  // namespace dualformer_emulation

inline int __float_as_int(float v) { return dualformer_emulation::bit_cast<int>(v); }
inline unsigned int __float_as_uint(float v) { return dualformer_emulation::bit_cast<unsigned int>(v); }
inline float __int_as_float(int v) { return dualformer_emulation::bit_cast<float>(v); }
inline float __uint_as_float(unsigned int v) { return dualformer_emulation::bit_cast<float>(v); }
inline long long __double_as_longlong(double v) { return dualformer_emulation::bit_cast<long long>(v); }
inline double __longlong_as_double(long long v) { return dualformer_emulation::bit_cast<double>(v); }

// CUDA's integer atomics (they return the old value).
#define DUALFORMER_EMULATED_ATOMIC(name, type, expr)                                 \
  inline type name(type* address, type value) {                                      \
    return dualformer_emulation::atomic_update(address, value,                       \
                                               [](type a, type b) { return expr; }); \
  }
DUALFORMER_EMULATED_ATOMIC(atomicMax, int, a > b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMax, unsigned int, a > b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMax, long long, a > b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMax, unsigned long long, a > b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMin, int, a < b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMin, unsigned int, a < b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMin, long long, a < b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicMin, unsigned long long, a < b ? a : b)
DUALFORMER_EMULATED_ATOMIC(atomicAdd, int, a + b)
DUALFORMER_EMULATED_ATOMIC(atomicAdd, unsigned long long, a + b)
DUALFORMER_EMULATED_ATOMIC(atomicAdd, float, a + b)
DUALFORMER_EMULATED_ATOMIC(atomicAdd, double, a + b)

// ATen's gpuAtomicAdd overloads (ATen/cuda/Atomic.cuh): one per type, no template, so that
// overload resolution converts arguments as it does on the device.
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, int32_t, a + b)
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, int64_t, a + b)
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, float, a + b)
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, double, a + b)
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, c10::Half, a + b)
DUALFORMER_EMULATED_ATOMIC(gpuAtomicAdd, c10::BFloat16, a + b)
#undef DUALFORMER_EMULATED_ATOMIC
