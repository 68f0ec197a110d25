// Copyright (c) dualformer-mm contributors.
// dualformer::partition_distribute: global-to-local aggregation of MHPA (paper section 3.2):
// every token receives the feature of its partition; the backward sums token gradients back
// into their partitions.
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

Tensor distribute_forward(const Tensor& pooled, const Tensor& codes) {
  TORCH_CHECK(pooled.dim() == 3, "pooled must be (G, K, D), got ", pooled.sizes());
  DUALFORMER_CHECK_GROUP_CODES(codes, pooled, "pooled");
  return DUALFORMER_DISPATCH_DEVICE(pooled, distribute_forward, pooled.contiguous(),
                                    codes.contiguous());
}

Tensor distribute_backward(const Tensor& grad, const Tensor& codes, int64_t num_partitions) {
  DUALFORMER_CHECK_GND(grad, "grad");
  DUALFORMER_CHECK_CODES(codes, grad);
  TORCH_CHECK(num_partitions >= 1, "num_partitions must be >= 1, got ", num_partitions);
  return DUALFORMER_DISPATCH_DEVICE(grad, distribute_backward, grad.contiguous(),
                                    codes.contiguous(), num_partitions);
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("partition_distribute(Tensor pooled, Tensor codes) -> Tensor");
  m.def("partition_distribute_backward(Tensor grad, Tensor codes, int num_partitions) -> Tensor");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) {
  m.impl("partition_distribute", &dualformer::distribute_forward);
  m.impl("partition_distribute_backward", &dualformer::distribute_backward);
}
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) {
  m.impl("partition_distribute", &dualformer::distribute_forward);
  m.impl("partition_distribute_backward", &dualformer::distribute_backward);
}
