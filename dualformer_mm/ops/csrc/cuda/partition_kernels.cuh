// Copyright (c) dualformer-mm contributors.
// CUDA kernel bodies of the partition ops of MHPA (paper section 3.2, eqs. 4-9), shared by the
// launchers in partition_cuda.cu.
//
// Design: there are only 4 to 16 partitions per group, so a one-block-per-partition reduction
// (the usual segment reduction) would leave the GPU idle and serialise on the biggest
// partition. Instead every (token, channel) element is one thread of a grid-stride loop and the
// reductions accumulate with atomics into a (G, K, D) buffer in the accumulation dtype (fp32
// for fp16/bf16/fp32, fp64 for fp64). K is an argument, never inferred from the codes, so no
// kernel needs a host synchronisation. Out-of-range codes trip a device assert.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace dualformer {
namespace cuda {

#define DUALFORMER_KERNEL_LOOP(i, n)                                                      \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Atomic max on floats through their integer bit patterns: non-negative floats order like
// signed ints, negative ones in reverse like unsigned ints. signbit, not `v >= 0`, so that -0.0
// takes the negative branch and still beats -inf.
__device__ __forceinline__ void atomic_max(float* address, float value) {
  if (!signbit(value)) {
    atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
  } else {
    atomicMin(reinterpret_cast<unsigned int*>(address), __float_as_uint(value));
  }
}

__device__ __forceinline__ void atomic_max(double* address, double value) {
  if (!signbit(value)) {
    atomicMax(reinterpret_cast<long long*>(address), __double_as_longlong(value));
  } else {
    atomicMin(reinterpret_cast<unsigned long long*>(address),
              static_cast<unsigned long long>(__double_as_longlong(value)));
  }
}

template <typename scalar_t>
__global__ void lsh_pack_kernel(const scalar_t* __restrict__ proj, int64_t* __restrict__ codes,
                                int64_t rows, int64_t bits) {
  DUALFORMER_KERNEL_LOOP(r, rows) {
    int64_t code = 0;
    // Compared in the projection's own precision (opmath: float for half types): a float64
    // projection of -1e-50 rounded to float would be -0.0f and count as positive.
    for (int64_t b = 0; b < bits; ++b)
      code |= static_cast<int64_t>(static_cast<at::opmath_type<scalar_t>>(proj[r * bits + b]) >= 0)
              << b;
    codes[r] = code;
  }
}

// Index of the (g, k, c) entry of a (G, K, D) buffer for element i of a (G, N, D) tensor.
__device__ __forceinline__ int64_t pooled_index(const int64_t* __restrict__ codes, int64_t i,
                                                int64_t tokens, int64_t dim, int64_t parts) {
  const int64_t row = i / dim, c = i - row * dim, g = row / tokens;
  const int64_t k = codes[row];
  CUDA_KERNEL_ASSERT(k >= 0 && k < parts && "codes must lie in [0, num_partitions)");
  return (g * parts + k) * dim + c;
}

template <typename scalar_t, typename acc_t>
__global__ void segment_max_kernel(const scalar_t* __restrict__ scores,
                                   const int64_t* __restrict__ codes, acc_t* __restrict__ peak,
                                   int64_t total, int64_t tokens, int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    atomic_max(peak + pooled_index(codes, i, tokens, dim, parts), static_cast<acc_t>(scores[i]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_sum_kernel(const scalar_t* __restrict__ scores,
                                   const scalar_t* __restrict__ values,
                                   const int64_t* __restrict__ codes,
                                   const acc_t* __restrict__ peak, acc_t* __restrict__ denom,
                                   acc_t* __restrict__ numer, int64_t total, int64_t tokens,
                                   int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    const acc_t e = ::exp(static_cast<acc_t>(scores[i]) - peak[p]);
    gpuAtomicAdd(denom + p, e);
    gpuAtomicAdd(numer + p, e * static_cast<acc_t>(values[i]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_finalize_kernel(const acc_t* __restrict__ peak,
                                        const acc_t* __restrict__ denom,
                                        const acc_t* __restrict__ numer,
                                        scalar_t* __restrict__ pooled, acc_t* __restrict__ stats,
                                        int64_t total) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const acc_t den = denom[i];
    // An empty partition pools nothing: zeros, and lse = -inf marks it. Only an empty
    // partition has den == 0 (its maximum adds exp(0) = 1); a NaN den (NaN or inf scores)
    // gives NaN, as in the reference, never a silent zero.
    const acc_t out = den != acc_t(0) ? numer[i] / den : acc_t(0);
    pooled[i] = static_cast<scalar_t>(out);
    stats[i] = den != acc_t(0) ? peak[i] + ::log(den) : -INFINITY;  // stats[0]: lse
    stats[total + i] = out;                                 // stats[1]: unrounded pooled
  }
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_backward_kernel(const scalar_t* __restrict__ grad,
                                        const scalar_t* __restrict__ scores,
                                        const scalar_t* __restrict__ values,
                                        const int64_t* __restrict__ codes,
                                        const acc_t* __restrict__ stats,
                                        scalar_t* __restrict__ grad_scores,
                                        scalar_t* __restrict__ grad_values, int64_t total,
                                        int64_t pooled_total, int64_t tokens, int64_t dim,
                                        int64_t parts) {
  const acc_t* lse = stats;
  const acc_t* pooled = stats + pooled_total;
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    // w = softmax weight of this token; d out/d v = w, d out/d s = w (v - out).
    const acc_t w = ::exp(static_cast<acc_t>(scores[i]) - lse[p]);
    const acc_t go = static_cast<acc_t>(grad[p]);
    grad_values[i] = static_cast<scalar_t>(w * go);
    grad_scores[i] = static_cast<scalar_t>(
        w * go * (static_cast<acc_t>(values[i]) - pooled[p]));
  }
}

// Per-token softmax (intra='token'): denom[p] += exp(s - max) over the partition's tokens.
template <typename scalar_t, typename acc_t>
__global__ void exp_sum_kernel(const scalar_t* __restrict__ scores,
                               const int64_t* __restrict__ codes, const acc_t* __restrict__ peak,
                               acc_t* __restrict__ denom, int64_t total, int64_t tokens,
                               int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    gpuAtomicAdd(denom + p, ::exp(static_cast<acc_t>(scores[i]) - peak[p]));
  }
}

// The per-token softmax weight of element i, in partition entry p: exp(s - max) / sum, with
// stats = (max, sum) of the (G, K, D) entries, pooled_total apart.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t softmax_weight(const scalar_t* __restrict__ scores,
                                                const acc_t* __restrict__ stats, int64_t i,
                                                int64_t p, int64_t pooled_total) {
  return ::exp(static_cast<acc_t>(scores[i]) - stats[p]) / stats[pooled_total + p];
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_weights_kernel(const scalar_t* __restrict__ scores,
                                       const int64_t* __restrict__ codes,
                                       const acc_t* __restrict__ stats,
                                       scalar_t* __restrict__ weights, int64_t total,
                                       int64_t pooled_total, int64_t tokens, int64_t dim,
                                       int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    weights[i] = static_cast<scalar_t>(softmax_weight(scores, stats, i, p, pooled_total));
  }
}

// Backward pass 1: dot[p] += w g, with w recomputed from the saved (max, sum).
template <typename scalar_t, typename acc_t>
__global__ void softmax_dot_kernel(const scalar_t* __restrict__ grad,
                                   const scalar_t* __restrict__ scores,
                                   const int64_t* __restrict__ codes,
                                   const acc_t* __restrict__ stats, acc_t* __restrict__ dot,
                                   int64_t total, int64_t pooled_total, int64_t tokens,
                                   int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    gpuAtomicAdd(dot + p, softmax_weight(scores, stats, i, p, pooled_total) *
                              static_cast<acc_t>(grad[i]));
  }
}

// Backward pass 2: ds = w (g - dot).
template <typename scalar_t, typename acc_t>
__global__ void softmax_grad_kernel(const scalar_t* __restrict__ grad,
                                    const scalar_t* __restrict__ scores,
                                    const int64_t* __restrict__ codes,
                                    const acc_t* __restrict__ stats,
                                    const acc_t* __restrict__ dot,
                                    scalar_t* __restrict__ grad_scores, int64_t total,
                                    int64_t pooled_total, int64_t tokens, int64_t dim,
                                    int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    const acc_t w = softmax_weight(scores, stats, i, p, pooled_total);
    grad_scores[i] = static_cast<scalar_t>(w * (static_cast<acc_t>(grad[i]) - dot[p]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ x,
                                   const int64_t* __restrict__ codes, acc_t* __restrict__ sums,
                                   int64_t* __restrict__ counts, int64_t total, int64_t tokens,
                                   int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    gpuAtomicAdd(sums + p, static_cast<acc_t>(x[i]));
    // Channel 0 of each token counts it; counts is (G, K), i.e. p without the channel.
    if (counts != nullptr && i % dim == 0) gpuAtomicAdd(counts + p / dim, int64_t(1));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void mean_finalize_kernel(const acc_t* __restrict__ sums,
                                     const int64_t* __restrict__ counts,
                                     scalar_t* __restrict__ means, int64_t total, int64_t dim) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t n = counts[i / dim];
    means[i] = static_cast<scalar_t>(sums[i] / static_cast<acc_t>(n > 1 ? n : 1));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void mean_backward_kernel(const scalar_t* __restrict__ grad,
                                     const int64_t* __restrict__ codes,
                                     const int64_t* __restrict__ counts,
                                     scalar_t* __restrict__ grad_x, int64_t total, int64_t tokens,
                                     int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) {
    const int64_t p = pooled_index(codes, i, tokens, dim, parts);
    const int64_t n = counts[p / dim];
    grad_x[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[p]) / static_cast<acc_t>(n > 1 ? n : 1));
  }
}

template <typename scalar_t>
__global__ void distribute_kernel(const scalar_t* __restrict__ pooled,
                                  const int64_t* __restrict__ codes, scalar_t* __restrict__ out,
                                  int64_t total, int64_t tokens, int64_t dim, int64_t parts) {
  DUALFORMER_KERNEL_LOOP(i, total) { out[i] = pooled[pooled_index(codes, i, tokens, dim, parts)]; }
}

}  // namespace cuda
}  // namespace dualformer
