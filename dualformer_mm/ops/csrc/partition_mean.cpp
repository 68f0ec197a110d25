// Copyright (c) dualformer-mm contributors.
// dualformer::partition_mean: the mean partition descriptors of inter-partition attention
// (paper section 3.2, eq. 8) and the token count of each partition, in one pass.
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

std::tuple<Tensor, Tensor> mean_forward(const Tensor& x, const Tensor& codes,
                                        int64_t num_partitions) {
  DUALFORMER_CHECK_GND(x, "x");
  DUALFORMER_CHECK_CODES(codes, x);
  TORCH_CHECK(num_partitions >= 1, "num_partitions must be >= 1, got ", num_partitions);
  return DUALFORMER_DISPATCH_DEVICE(x, mean_forward, x.contiguous(), codes.contiguous(),
                                    num_partitions);
}

Tensor mean_backward(const Tensor& grad, const Tensor& codes, const Tensor& counts) {
  TORCH_CHECK(grad.dim() == 3 && counts.sizes() == grad.sizes().slice(0, 2),
              "grad must be (G, K, D) and counts (G, K); got ", grad.sizes(), " and ",
              counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong, "counts must be int64, got ",
              counts.scalar_type());
  DUALFORMER_CHECK_GROUP_CODES(codes, grad, "grad");
  TORCH_CHECK(counts.device() == grad.device(), "counts and grad must share a device");
  return DUALFORMER_DISPATCH_DEVICE(grad, mean_backward, grad.contiguous(), codes.contiguous(),
                                    counts.contiguous());
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("partition_mean(Tensor x, Tensor codes, int num_partitions) -> (Tensor, Tensor)");
  m.def("partition_mean_backward(Tensor grad, Tensor codes, Tensor counts) -> Tensor");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) {
  m.impl("partition_mean", &dualformer::mean_forward);
  m.impl("partition_mean_backward", &dualformer::mean_backward);
}
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) {
  m.impl("partition_mean", &dualformer::mean_forward);
  m.impl("partition_mean_backward", &dualformer::mean_backward);
}
