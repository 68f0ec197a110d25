// Copyright (c) dualformer-mm contributors.
// dualformer::partition_softmax: the per-token reading of intra-partition attention of MHPA
// (paper section 3.2, eqs. 6-7 with `intra='token'`): for every channel, the softmax of the
// scores over the tokens of each partition, one weight per token.
//
// The forward also returns per-partition statistics in the accumulation dtype, stats[0] = the
// partition's maximum and stats[1] = the sum of exp(s - max), so that the backward recomputes
// each weight exactly as the forward did, without storing the (G, N, D) weights twice.
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

std::tuple<Tensor, Tensor> softmax_forward(const Tensor& scores, const Tensor& codes,
                                           int64_t num_partitions) {
  DUALFORMER_CHECK_GND(scores, "scores");
  DUALFORMER_CHECK_CODES(codes, scores);
  TORCH_CHECK(num_partitions >= 1, "num_partitions must be >= 1, got ", num_partitions);
  return DUALFORMER_DISPATCH_DEVICE(scores, softmax_forward, scores.contiguous(),
                                    codes.contiguous(), num_partitions);
}

Tensor softmax_backward(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                        const Tensor& stats) {
  DUALFORMER_CHECK_GND(scores, "scores");
  TORCH_CHECK(grad.sizes() == scores.sizes(), "grad must have the shape of scores ",
              scores.sizes(), ", got ", grad.sizes());
  // The kernels index stats with the shapes of scores and codes: a direct call with
  // mismatched tensors must fail here, not read out of bounds.
  TORCH_CHECK(stats.dim() == 4 && stats.size(0) == 2 && stats.size(1) == scores.size(0) &&
                  stats.size(3) == scores.size(2),
              "stats must be (2, G, K, D) with G and D of scores ", scores.sizes(), "; got ",
              stats.sizes());
  TORCH_CHECK(grad.scalar_type() == scores.scalar_type(), "grad and scores must share a dtype");
  TORCH_CHECK(stats.scalar_type() ==
                  (scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "stats must be in the accumulation dtype of scores, got ", stats.scalar_type());
  DUALFORMER_CHECK_CODES(codes, scores);
  TORCH_CHECK(grad.device() == scores.device() && stats.device() == scores.device(),
              "grad, scores and stats must share a device");
  return DUALFORMER_DISPATCH_DEVICE(scores, softmax_backward, grad.contiguous(),
                                    scores.contiguous(), codes.contiguous(), stats.contiguous());
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("partition_softmax(Tensor scores, Tensor codes, int num_partitions) -> (Tensor, Tensor)");
  m.def("partition_softmax_backward(Tensor grad, Tensor scores, Tensor codes, Tensor stats)"
        " -> Tensor");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) {
  m.impl("partition_softmax", &dualformer::softmax_forward);
  m.impl("partition_softmax_backward", &dualformer::softmax_backward);
}
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) {
  m.impl("partition_softmax", &dualformer::softmax_forward);
  m.impl("partition_softmax_backward", &dualformer::softmax_backward);
}
