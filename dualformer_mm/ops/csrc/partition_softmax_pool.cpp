// Copyright (c) dualformer-mm contributors.
// dualformer::partition_softmax_pool: intra-partition attention of MHPA (paper section 3.2,
// eqs. 6-7): a per-channel softmax of the scores over each partition weights the values.
//
// The forward also returns per-partition statistics in the accumulation dtype: the
// log-sum-exp, with which the backward recomputes each token's weight exp(s - lse) without a
// second reduction, and the unrounded pooled feature (for fp16/bf16 the rounded one would put
// an error of one half-precision ulp into every score gradient).
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

std::tuple<Tensor, Tensor> softmax_pool_forward(const Tensor& scores, const Tensor& values,
                                                const Tensor& codes, int64_t num_partitions) {
  DUALFORMER_CHECK_GND(scores, "scores");
  DUALFORMER_CHECK_GND(values, "values");
  TORCH_CHECK(scores.sizes() == values.sizes(), "scores ", scores.sizes(), " and values ",
              values.sizes(), " must have one shape");
  TORCH_CHECK(scores.scalar_type() == values.scalar_type(), "scores and values must share a dtype");
  TORCH_CHECK(scores.device() == values.device(), "scores and values must share a device");
  DUALFORMER_CHECK_CODES(codes, values);
  TORCH_CHECK(num_partitions >= 1, "num_partitions must be >= 1, got ", num_partitions);
  return DUALFORMER_DISPATCH_DEVICE(values, softmax_pool_forward, scores.contiguous(),
                                    values.contiguous(), codes.contiguous(), num_partitions);
}

std::tuple<Tensor, Tensor> softmax_pool_backward(const Tensor& grad, const Tensor& scores,
                                                 const Tensor& values, const Tensor& codes,
                                                 const Tensor& stats) {
  TORCH_CHECK(grad.dim() == 3 && stats.dim() == 4 && stats.size(0) == 2 &&
                  stats.sizes().slice(1) == grad.sizes(),
              "grad must be (G, K, D) and stats (2, G, K, D); got ", grad.sizes(), " and ",
              stats.sizes());
  // The kernels index grad and stats with the shapes of values and codes: a direct call with
  // mismatched tensors must fail here, not read out of bounds.
  DUALFORMER_CHECK_GND(values, "values");
  TORCH_CHECK(scores.sizes() == values.sizes() && values.size(0) == grad.size(0) &&
                  values.size(2) == grad.size(2),
              "scores and values must be (G, N, D) with G and D of grad ", grad.sizes(),
              "; got ", scores.sizes(), " and ", values.sizes());
  DUALFORMER_CHECK_CODES(codes, values);
  TORCH_CHECK(grad.device() == values.device() && scores.device() == values.device() &&
                  stats.device() == values.device(),
              "grad, scores, values and stats must share a device");
  return DUALFORMER_DISPATCH_DEVICE(values, softmax_pool_backward, grad.contiguous(),
                                    scores.contiguous(), values.contiguous(), codes.contiguous(),
                                    stats.contiguous());
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("partition_softmax_pool(Tensor scores, Tensor values, Tensor codes, int num_partitions)"
        " -> (Tensor, Tensor)");
  m.def("partition_softmax_pool_backward(Tensor grad, Tensor scores, Tensor values, "
        "Tensor codes, Tensor stats) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) {
  m.impl("partition_softmax_pool", &dualformer::softmax_pool_forward);
  m.impl("partition_softmax_pool_backward", &dualformer::softmax_pool_backward);
}
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) {
  m.impl("partition_softmax_pool", &dualformer::softmax_pool_forward);
  m.impl("partition_softmax_pool_backward", &dualformer::softmax_pool_backward);
}
