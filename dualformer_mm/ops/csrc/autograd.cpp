// Copyright (c) dualformer-mm contributors.
// Autograd of the partition ops of MHPA (paper section 3.2), registered in C++ at the
// dispatcher's Autograd key.
//
// Why C++ and not torch.library.register_autograd: at MHPA's sizes a kernel runs in tens of
// microseconds, and a Python autograd wrapper costs about as much per call; in C++ the fused
// ops pay the same per-call price as the native ops of the reference. Forward and backward go
// through the dispatcher (not straight to a kernel), so under torch.compile's fake tensors
// they reach the fake kernels registered in Python, and AOTAutograd traces both graphs.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

class SoftmaxPoolFunction : public torch::autograd::Function<SoftmaxPoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& scores, const Tensor& values,
                               const Tensor& codes, int64_t num_partitions) {
    static const auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                              const Tensor&, int64_t)>(
        "dualformer::partition_softmax_pool");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [pooled, stats] = op.call(scores, values, codes, num_partitions);
    ctx->save_for_backward({scores, values, codes, stats});
    // stats (log-sum-exp, unrounded pooled) only serves this backward.
    ctx->mark_non_differentiable({stats});
    return {pooled, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<std::tuple<Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
        "dualformer::partition_softmax_pool_backward");
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    auto [grad_scores, grad_values] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3]);
    return {grad_scores, grad_values, Tensor(), Tensor()};
  }
};

class SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& scores, const Tensor& codes,
                               int64_t num_partitions) {
    static const auto op =
        find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t)>(
            "dualformer::partition_softmax");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [weights, stats] = op.call(scores, codes, num_partitions);
    ctx->save_for_backward({scores, codes, stats});
    // stats (per-partition max and sum of exp) only serves this backward.
    ctx->mark_non_differentiable({stats});
    return {weights, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>(
            "dualformer::partition_softmax_backward");
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1], saved[2]), Tensor(), Tensor()};
  }
};

class MeanFunction : public torch::autograd::Function<MeanFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& codes,
                               int64_t num_partitions) {
    static const auto op =
        find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t)>(
            "dualformer::partition_mean");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [means, counts] = op.call(x, codes, num_partitions);
    ctx->save_for_backward({codes, counts});
    return {means, counts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&, const Tensor&)>(
        "dualformer::partition_mean_backward");
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1]), Tensor(), Tensor()};
  }
};

class DistributeFunction : public torch::autograd::Function<DistributeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& pooled, const Tensor& codes) {
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&)>(
        "dualformer::partition_distribute");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({codes});
    // K comes from an int argument of the pooling ops, so it is static even under tracing.
    ctx->saved_data["num_partitions"] = pooled.size(1);
    return {op.call(pooled, codes)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&, int64_t)>(
        "dualformer::partition_distribute_backward");
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], ctx->saved_data["num_partitions"].toInt()), Tensor()};
  }
};

std::tuple<Tensor, Tensor> softmax_pool_autograd(const Tensor& scores, const Tensor& values,
                                                 const Tensor& codes, int64_t num_partitions) {
  auto out = SoftmaxPoolFunction::apply(scores, values, codes, num_partitions);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> softmax_autograd(const Tensor& scores, const Tensor& codes,
                                            int64_t num_partitions) {
  auto out = SoftmaxFunction::apply(scores, codes, num_partitions);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> mean_autograd(const Tensor& x, const Tensor& codes,
                                         int64_t num_partitions) {
  auto out = MeanFunction::apply(x, codes, num_partitions);
  return {out[0], out[1]};
}

Tensor distribute_autograd(const Tensor& pooled, const Tensor& codes) {
  return DistributeFunction::apply(pooled, codes)[0];
}

}  // namespace
}  // namespace dualformer

TORCH_LIBRARY_IMPL(dualformer, Autograd, m) {
  m.impl("partition_softmax_pool", &dualformer::softmax_pool_autograd);
  m.impl("partition_softmax", &dualformer::softmax_autograd);
  m.impl("partition_mean", &dualformer::mean_autograd);
  m.impl("partition_distribute", &dualformer::distribute_autograd);
}
