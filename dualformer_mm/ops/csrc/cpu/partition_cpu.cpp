// Copyright (c) dualformer-mm contributors.
// OpenMP CPU kernels of the partition ops of MHPA (paper section 3.2, eqs. 4-9).
//
// Parallelism comes from at::parallel_for, which is OpenMP in torch's CPU builds (this file is
// compiled with -fopenmp so its pragmas are live) and follows torch.set_num_threads.
// No two threads ever write the same accumulator, so no atomics are needed: the softmax
// pooling splits (group, channel block) tasks, each owning a K x kBlock accumulator (splitting
// channels keeps both cores busy at batch 1, where stage 1 has a single group); the plain
// per-partition sums split (group, token chunk) tasks and add the chunks' sums in order; the
// hash splits tiles of tokens; per-token maps (the backward passes, distribute) split tokens.
// Half and bfloat16 inputs accumulate in float (at::opmath_type), double in double.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../partition_ops.h"

// The kernels, once for the default target and once for AVX2+FMA (x86-64 with GCC/Clang).
#define DUALFORMER_CPU_NS base
#include "partition_cpu_kernels.h"
#undef DUALFORMER_CPU_NS
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DUALFORMER_CPU_NS avx2
#include "partition_cpu_kernels.h"
#undef DUALFORMER_CPU_NS
#pragma GCC pop_options
#define DUALFORMER_HAS_AVX2_KERNELS 1
#endif

namespace dualformer {
namespace {

#ifdef DUALFORMER_HAS_AVX2_KERNELS
bool use_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
// The kernel `fn` compiled for the best instruction set this CPU has. (An AVX-512 build of the
// same sources measured no faster here: the ops are bound by memory traffic and dispatch.)
#define DUALFORMER_CPU_KERNEL(fn) (use_avx2() ? &avx2::fn : &base::fn)
#else
#define DUALFORMER_CPU_KERNEL(fn) (&base::fn)
#endif

inline void check_codes(const std::atomic<bool>& bad, int64_t num_partitions) {
  TORCH_CHECK(!bad.load(), "codes must lie in [0, ", num_partitions, ")");
}

at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

Tensor lsh_hash_cpu(const Tensor& x, const Tensor& planes) {
  const int64_t batch = x.size(0), heads = x.size(1), tokens = x.size(2), dim = x.size(3);
  const int64_t bits = planes.size(2);
  Tensor codes = at::empty({batch, heads, tokens}, x.options().dtype(at::kLong));
  if (codes.numel() == 0) return codes;
  const Tensor w = planes.to(at::kDouble).contiguous();
  const int64_t strides[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lsh_hash_cpu", [&] {
    DUALFORMER_CPU_KERNEL(lsh_hash_kernel<scalar_t>)(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<double>(), codes.data_ptr<int64_t>(),
        batch, heads, tokens, dim, bits, strides);
  });
  return codes;
}

std::tuple<Tensor, Tensor> softmax_pool_forward_cpu(const Tensor& scores, const Tensor& values,
                                                    const Tensor& codes, int64_t parts) {
  const int64_t groups = values.size(0), tokens = values.size(1), dim = values.size(2);
  Tensor pooled = at::empty({groups, parts, dim}, values.options());
  Tensor stats = at::empty({2, groups, parts, dim},
                           values.options().dtype(acc_type_of(values.scalar_type())));
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "softmax_pool_forward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(softmax_pool_forward_kernel<scalar_t>)(
        scores.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
        codes.const_data_ptr<int64_t>(), pooled.data_ptr<scalar_t>(),
        stats.data_ptr<at::opmath_type<scalar_t>>(), groups, tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return {pooled, stats};
}

std::tuple<Tensor, Tensor> softmax_pool_backward_cpu(const Tensor& grad, const Tensor& scores,
                                                     const Tensor& values, const Tensor& codes,
                                                     const Tensor& stats) {
  const int64_t groups = values.size(0), tokens = values.size(1), dim = values.size(2);
  const int64_t parts = stats.size(2);
  Tensor grad_scores = at::empty_like(scores);
  Tensor grad_values = at::empty_like(values);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "softmax_pool_backward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(softmax_pool_backward_kernel<scalar_t>)(
        grad.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
        values.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
        stats.const_data_ptr<at::opmath_type<scalar_t>>(),
        grad_scores.data_ptr<scalar_t>(), grad_values.data_ptr<scalar_t>(), groups, tokens, dim,
        parts, bad);
  });
  check_codes(bad, parts);
  return {grad_scores, grad_values};
}

std::tuple<Tensor, Tensor> softmax_forward_cpu(const Tensor& scores, const Tensor& codes,
                                               int64_t parts) {
  const int64_t groups = scores.size(0), tokens = scores.size(1), dim = scores.size(2);
  Tensor weights = at::empty_like(scores);
  Tensor stats = at::empty({2, groups, parts, dim},
                           scores.options().dtype(acc_type_of(scores.scalar_type())));
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(),
                                  "softmax_forward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(softmax_forward_kernel<scalar_t>)(
        scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
        weights.data_ptr<scalar_t>(), stats.data_ptr<at::opmath_type<scalar_t>>(), groups,
        tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return {weights, stats};
}

Tensor softmax_backward_cpu(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                            const Tensor& stats) {
  const int64_t groups = scores.size(0), tokens = scores.size(1), dim = scores.size(2);
  const int64_t parts = stats.size(2);
  Tensor grad_scores = at::empty_like(scores);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(),
                                  "softmax_backward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(softmax_backward_kernel<scalar_t>)(
        grad.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
        codes.const_data_ptr<int64_t>(), stats.const_data_ptr<at::opmath_type<scalar_t>>(),
        grad_scores.data_ptr<scalar_t>(), groups, tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return grad_scores;
}

std::tuple<Tensor, Tensor> mean_forward_cpu(const Tensor& x, const Tensor& codes, int64_t parts) {
  const int64_t groups = x.size(0), tokens = x.size(1), dim = x.size(2);
  Tensor means = at::empty({groups, parts, dim}, x.options());
  Tensor counts = at::empty({groups, parts}, x.options().dtype(at::kLong));  // all written
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mean_forward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(mean_forward_kernel<scalar_t>)(x.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                                  means.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), groups,
                                  tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return {means, counts};
}

Tensor mean_backward_cpu(const Tensor& grad, const Tensor& codes, const Tensor& counts) {
  const int64_t groups = grad.size(0), parts = grad.size(1), dim = grad.size(2);
  const int64_t tokens = codes.size(1);
  Tensor grad_x = at::empty({groups, tokens, dim}, grad.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mean_backward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(mean_backward_kernel<scalar_t>)(grad.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                                   counts.const_data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(),
                                   groups, tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return grad_x;
}

Tensor distribute_forward_cpu(const Tensor& pooled, const Tensor& codes) {
  const int64_t groups = pooled.size(0), parts = pooled.size(1), dim = pooled.size(2);
  const int64_t tokens = codes.size(1);
  Tensor out = at::empty({groups, tokens, dim}, pooled.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pooled.scalar_type(), "distribute_forward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(distribute_forward_kernel<scalar_t>)(pooled.const_data_ptr<scalar_t>(),
                                        codes.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                        groups, tokens, dim, parts, bad);
  });
  check_codes(bad, parts);
  return out;
}

Tensor distribute_backward_cpu(const Tensor& grad, const Tensor& codes, int64_t parts) {
  const int64_t groups = grad.size(0), tokens = grad.size(1), dim = grad.size(2);
  Tensor grad_pooled = at::empty({groups, parts, dim}, grad.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "distribute_backward_cpu", [&] {
    DUALFORMER_CPU_KERNEL(distribute_backward_kernel<scalar_t>)(grad.const_data_ptr<scalar_t>(),
                                         codes.const_data_ptr<int64_t>(),
                                         grad_pooled.data_ptr<scalar_t>(), groups, tokens, dim,
                                         parts, bad);
  });
  check_codes(bad, parts);
  return grad_pooled;
}

}  // namespace dualformer
