// Copyright (c) dualformer-mm contributors.
// Launch arithmetic of the partition kernels (partition_kernels.cuh): for every op, the
// buffers with their shapes and initial values, the stats layout, the grid sizes and the
// order of the kernels. Host code only, templated on a launcher that starts one kernel:
// partition_cuda.cu passes one that launches with <<<>>> on the current stream; the tests
// compile this file with a C++ compiler and a launcher that runs the grid as loops
// (tests/cuda_emulation), so the arithmetic they check is this one, not a copy.
//
// A Launcher provides
//   int64_t multiprocessors() const;  // streaming multiprocessors of the device
//   template <typename... Params, typename... Args>
//   void operator()(void (*kernel)(Params...), unsigned int blocks, unsigned int threads,
//                   Args... args) const;  // runs kernel<<<blocks, threads>>>(args...)
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "partition_kernels.cuh"

namespace dualformer {
namespace cuda {

using at::Tensor;

constexpr unsigned int kThreads = 256;
// Resident blocks per multiprocessor that the grid aims at; grid-stride loops cover the rest.
constexpr int64_t kBlocksPerMultiprocessor = 32;

inline unsigned int num_blocks(int64_t total, int64_t multiprocessors) {
  const int64_t cap = multiprocessors * kBlocksPerMultiprocessor;
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, cap)));
}

// Starts `kernel` over `total` elements: one thread per element up to the grid's cap.
template <typename Launcher, typename... Params, typename... Args>
void launch_over(const Launcher& launch, int64_t total, void (*kernel)(Params...),
                 Args... args) {
  launch(kernel, num_blocks(total, launch.multiprocessors()), kThreads, args...);
}

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The reductions add floats with atomics, in an order that varies from run to run; like
// ATen's index_add_ on CUDA, they refuse to run under torch.use_deterministic_algorithms(True)
// (or warn, with warn_only=True). The reference path is deterministic there.
inline void alert_atomics(const char* op) { at::globalContext().alertNotDeterministic(op); }

template <typename Launcher>
Tensor lsh_pack(const Launcher& launch, const Tensor& proj) {
  const int64_t bits = proj.size(-1), rows = proj.numel() / std::max<int64_t>(bits, 1);
  auto sizes = proj.sizes().vec();
  sizes.pop_back();
  Tensor codes = at::empty(sizes, proj.options().dtype(at::kLong));
  if (rows == 0) return codes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, proj.scalar_type(), "lsh_pack_cuda", [&] {
    launch_over(launch, rows, lsh_pack_kernel<scalar_t>, proj.const_data_ptr<scalar_t>(),
                codes.data_ptr<int64_t>(), rows, bits);
  });
  return codes;
}

template <typename Launcher>
std::tuple<Tensor, Tensor> softmax_pool_forward(const Launcher& launch, const Tensor& scores,
                                                const Tensor& values, const Tensor& codes,
                                                int64_t parts) {
  alert_atomics("dualformer::partition_softmax_pool (CUDA)");
  const int64_t groups = values.size(0), tokens = values.size(1), dim = values.size(2);
  const auto acc_options = values.options().dtype(acc_type_of(values.scalar_type()));
  Tensor peak = at::full({groups, parts, dim}, -std::numeric_limits<double>::infinity(), acc_options);
  Tensor denom = at::zeros({groups, parts, dim}, acc_options);
  Tensor numer = at::zeros({groups, parts, dim}, acc_options);
  Tensor pooled = at::empty({groups, parts, dim}, values.options());
  Tensor stats = at::empty({2, groups, parts, dim}, acc_options);
  const int64_t total = values.numel(), pooled_total = pooled.numel();
  if (pooled_total == 0) return {pooled, stats};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "softmax_pool_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (total > 0) {
      launch_over(launch, total, segment_max_kernel<scalar_t, acc_t>,
                  scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                  peak.data_ptr<acc_t>(), total, tokens, dim, parts);
      launch_over(launch, total, softmax_sum_kernel<scalar_t, acc_t>,
                  scores.const_data_ptr<scalar_t>(), values.const_data_ptr<scalar_t>(),
                  codes.const_data_ptr<int64_t>(), peak.const_data_ptr<acc_t>(),
                  denom.data_ptr<acc_t>(), numer.data_ptr<acc_t>(), total, tokens, dim, parts);
    }
    launch_over(launch, pooled_total, softmax_finalize_kernel<scalar_t, acc_t>,
                peak.const_data_ptr<acc_t>(), denom.const_data_ptr<acc_t>(),
                numer.const_data_ptr<acc_t>(), pooled.data_ptr<scalar_t>(),
                stats.data_ptr<acc_t>(), pooled_total);
  });
  return {pooled, stats};
}

template <typename Launcher>
std::tuple<Tensor, Tensor> softmax_pool_backward(const Launcher& launch, const Tensor& grad,
                                                 const Tensor& scores, const Tensor& values,
                                                 const Tensor& codes, const Tensor& stats) {
  const int64_t tokens = values.size(1), dim = values.size(2), parts = stats.size(2);
  const int64_t pooled_total = stats.numel() / 2;
  Tensor grad_scores = at::empty_like(scores);
  Tensor grad_values = at::empty_like(values);
  const int64_t total = values.numel();
  if (total == 0) return {grad_scores, grad_values};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "softmax_pool_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    launch_over(launch, total, softmax_backward_kernel<scalar_t, acc_t>,
                grad.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
                values.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                stats.const_data_ptr<acc_t>(), grad_scores.data_ptr<scalar_t>(),
                grad_values.data_ptr<scalar_t>(), total, pooled_total, tokens, dim, parts);
  });
  return {grad_scores, grad_values};
}

template <typename Launcher>
std::tuple<Tensor, Tensor> softmax_forward(const Launcher& launch, const Tensor& scores,
                                           const Tensor& codes, int64_t parts) {
  alert_atomics("dualformer::partition_softmax (CUDA)");
  const int64_t groups = scores.size(0), tokens = scores.size(1), dim = scores.size(2);
  const auto acc_options = scores.options().dtype(acc_type_of(scores.scalar_type()));
  // stats[0] = max (starts at -inf), stats[1] = sum of exp (starts at 0).
  Tensor stats = at::empty({2, groups, parts, dim}, acc_options);
  stats.select(0, 0).fill_(-std::numeric_limits<double>::infinity());
  stats.select(0, 1).zero_();
  Tensor weights = at::empty_like(scores);
  const int64_t total = scores.numel(), pooled_total = groups * parts * dim;
  if (total == 0) return {weights, stats};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "softmax_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    acc_t* peak = stats.data_ptr<acc_t>();
    launch_over(launch, total, segment_max_kernel<scalar_t, acc_t>,
                scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(), peak, total,
                tokens, dim, parts);
    launch_over(launch, total, exp_sum_kernel<scalar_t, acc_t>,
                scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                peak, peak + pooled_total, total, tokens, dim, parts);
    launch_over(launch, total, softmax_weights_kernel<scalar_t, acc_t>,
                scores.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                peak, weights.data_ptr<scalar_t>(), total,
                pooled_total, tokens, dim, parts);
  });
  return {weights, stats};
}

template <typename Launcher>
Tensor softmax_backward(const Launcher& launch, const Tensor& grad, const Tensor& scores,
                        const Tensor& codes, const Tensor& stats) {
  alert_atomics("dualformer::partition_softmax_backward (CUDA)");
  const int64_t groups = scores.size(0), tokens = scores.size(1), dim = scores.size(2);
  const int64_t parts = stats.size(2), pooled_total = groups * parts * dim;
  Tensor grad_scores = at::empty_like(scores);
  const int64_t total = scores.numel();
  if (total == 0) return grad_scores;
  Tensor dot = at::zeros({groups, parts, dim}, stats.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "softmax_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    launch_over(launch, total, softmax_dot_kernel<scalar_t, acc_t>,
                grad.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
                codes.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(),
                dot.data_ptr<acc_t>(), total, pooled_total, tokens, dim, parts);
    launch_over(launch, total, softmax_grad_kernel<scalar_t, acc_t>,
                grad.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
                codes.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(),
                dot.const_data_ptr<acc_t>(), grad_scores.data_ptr<scalar_t>(), total,
                pooled_total, tokens, dim, parts);
  });
  return grad_scores;
}

template <typename Launcher>
std::tuple<Tensor, Tensor> mean_forward(const Launcher& launch, const Tensor& x,
                                        const Tensor& codes, int64_t parts) {
  alert_atomics("dualformer::partition_mean (CUDA)");
  const int64_t groups = x.size(0), tokens = x.size(1), dim = x.size(2);
  if (dim == 0) {
    // The sum kernel counts a token at its channel 0; with no channels, count with one zero
    // channel and return the empty means.
    const Tensor one = at::zeros({groups, tokens, 1}, x.options());
    return {at::empty({groups, parts, 0}, x.options()),
            std::get<1>(mean_forward(launch, one, codes, parts))};
  }
  const auto acc_options = x.options().dtype(acc_type_of(x.scalar_type()));
  Tensor sums = at::zeros({groups, parts, dim}, acc_options);
  Tensor counts = at::zeros({groups, parts}, x.options().dtype(at::kLong));
  Tensor means = at::empty({groups, parts, dim}, x.options());
  const int64_t total = x.numel(), pooled_total = means.numel();
  if (pooled_total == 0) return {means, counts};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mean_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    if (total > 0) {
      launch_over(launch, total, segment_sum_kernel<scalar_t, acc_t>,
                  x.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                  sums.data_ptr<acc_t>(), counts.data_ptr<int64_t>(), total, tokens, dim, parts);
    }
    launch_over(launch, pooled_total, mean_finalize_kernel<scalar_t, acc_t>,
                sums.const_data_ptr<acc_t>(), counts.const_data_ptr<int64_t>(),
                means.data_ptr<scalar_t>(), pooled_total, dim);
  });
  return {means, counts};
}

template <typename Launcher>
Tensor mean_backward(const Launcher& launch, const Tensor& grad, const Tensor& codes,
                     const Tensor& counts) {
  const int64_t groups = grad.size(0), parts = grad.size(1), dim = grad.size(2);
  const int64_t tokens = codes.size(1);
  Tensor grad_x = at::empty({groups, tokens, dim}, grad.options());
  const int64_t total = grad_x.numel();
  if (total == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mean_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    launch_over(launch, total, mean_backward_kernel<scalar_t, acc_t>,
                grad.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                counts.const_data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(), total, tokens,
                dim, parts);
  });
  return grad_x;
}

template <typename Launcher>
Tensor distribute_forward(const Launcher& launch, const Tensor& pooled, const Tensor& codes) {
  const int64_t groups = pooled.size(0), parts = pooled.size(1), dim = pooled.size(2);
  const int64_t tokens = codes.size(1);
  Tensor out = at::empty({groups, tokens, dim}, pooled.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pooled.scalar_type(), "distribute_forward_cuda", [&] {
    launch_over(launch, total, distribute_kernel<scalar_t>, pooled.const_data_ptr<scalar_t>(),
                codes.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, tokens, dim,
                parts);
  });
  return out;
}

template <typename Launcher>
Tensor distribute_backward(const Launcher& launch, const Tensor& grad, const Tensor& codes,
                           int64_t parts) {
  alert_atomics("dualformer::partition_distribute_backward (CUDA)");
  const int64_t groups = grad.size(0), tokens = grad.size(1), dim = grad.size(2);
  Tensor sums = at::zeros({groups, parts, dim}, grad.options().dtype(acc_type_of(grad.scalar_type())));
  const int64_t total = grad.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "distribute_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      launch_over(launch, total, segment_sum_kernel<scalar_t, acc_t>,
                  grad.const_data_ptr<scalar_t>(), codes.const_data_ptr<int64_t>(),
                  sums.data_ptr<acc_t>(), nullptr, total, tokens, dim,
                  parts);
    });
  }
  // Accumulated in fp32 so that fp16 sums over many tokens keep their precision; one cast back.
  return sums.to(grad.scalar_type());
}

}  // namespace cuda
}  // namespace dualformer
