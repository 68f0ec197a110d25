// Copyright (c) dualformer-mm contributors.
// dualformer::lsh_hash: the LSH partition generator of MHPA (paper section 3.2, eqs. 4-5).
//
// Projections are computed in float64, as in the PyTorch reference: the products of float32
// (or half) inputs are exact there, so the sign of a projection, and hence the code, does not
// depend on the order in which a backend sums over channels (ATen's einsum, cuBLAS, the CPU
// kernel below) unless the projection lies within about D * 2^-53 of sum_d |x_d w_d| from a
// hyperplane. In float32 a different order flips about one projection in 10^5 (those within
// rounding of zero), which would make the codes of two correct implementations disagree.
//
// CPU: one fused kernel projects and packs the sign bits; BLAS is slow for a (N x D) @ (D x P)
// product with P = 2-4 columns (MKL's took 60% of the reference's time). CUDA: the
// reference's einsum in float64, then a kernel packs the bits.
#include <ATen/ops/einsum.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

Tensor lsh_hash(const Tensor& x, const Tensor& planes) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == planes.device(), "x and planes must share a device");
  const bool per_head = planes.dim() == 3;
  if (per_head) {
    TORCH_CHECK(x.dim() == 4 && x.size(1) == planes.size(0) && x.size(3) == planes.size(1),
                "per-head planes (H, D, P) need x of shape (B, H, N, D); got x ", x.sizes(),
                " and planes ", planes.sizes());
  } else {
    TORCH_CHECK(planes.dim() == 2 && x.dim() >= 1 && x.size(-1) == planes.size(0),
                "shared planes must be (D, P) with D = x.size(-1); got x ", x.sizes(),
                " and planes ", planes.sizes());
  }
  // Codes are int64: 62 bits keep 2^P positive and far beyond any useful partition count.
  TORCH_CHECK(planes.size(-1) >= 1 && planes.size(-1) <= 62, "1 to 62 planes supported, got ",
              planes.size(-1));
#ifdef WITH_CUDA
  if (x.is_cuda()) {
    const Tensor xd = x.to(at::kDouble), wd = planes.to(at::kDouble);
    const Tensor proj = per_head ? at::einsum("bhnd,hdp->bhnp", {xd, wd}) : at::matmul(xd, wd);
    return lsh_pack_cuda(proj.contiguous());
  }
#else
  check_not_cuda(x, "lsh_hash");
#endif
  if (per_head) return lsh_hash_cpu(x, planes);
  // Shared planes: every leading dimension is one group of tokens of a single "head".
  auto sizes = x.sizes().vec();
  sizes.pop_back();
  return lsh_hash_cpu(x.reshape({1, 1, -1, x.size(-1)}), planes.unsqueeze(0)).view(sizes);
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("lsh_hash(Tensor x, Tensor planes) -> Tensor");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) { m.impl("lsh_hash", &dualformer::lsh_hash); }
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) { m.impl("lsh_hash", &dualformer::lsh_hash); }
