// Copyright (c) dualformer-mm contributors.
// dualformer::lsh_hash: the LSH partition generator of MHPA (paper section 3.2, eqs. 4-5).
//
// The projection onto the hyperplanes is the same ATen call the PyTorch reference makes
// (einsum for per-head planes, matmul for shared planes), so the projections, and hence the
// codes, are bit-identical to the reference's; a hand-written dot product would sum in another
// order and flip the sign of projections within rounding of zero. What the kernel fuses is the
// rest: comparison, powers of two and the sum over bits, one pass instead of five ops and
// three int64 temporaries.
#include <ATen/ops/einsum.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "partition_ops.h"

namespace dualformer {

Tensor lsh_hash(const Tensor& x, const Tensor& planes) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == planes.device(), "x and planes must share a device");
  Tensor proj;
  if (planes.dim() == 3) {
    TORCH_CHECK(x.dim() == 4 && x.size(1) == planes.size(0) && x.size(3) == planes.size(1),
                "per-head planes (H, D, P) need x of shape (B, H, N, D); got x ", x.sizes(),
                " and planes ", planes.sizes());
    proj = at::einsum("bhnd,hdp->bhnp", {x, planes.to(x.scalar_type())});
  } else {
    TORCH_CHECK(planes.dim() == 2 && x.size(-1) == planes.size(0),
                "shared planes must be (D, P) with D = x.size(-1); got x ", x.sizes(),
                " and planes ", planes.sizes());
    proj = at::matmul(x, planes.to(x.scalar_type()));
  }
  // Codes are int64: 62 bits keep 2^P positive and far beyond any useful partition count.
  TORCH_CHECK(planes.size(-1) >= 1 && planes.size(-1) <= 62, "1 to 62 planes supported, got ",
              planes.size(-1));
  return DUALFORMER_DISPATCH_DEVICE(proj, lsh_pack, proj.contiguous());
}

}  // namespace dualformer

TORCH_LIBRARY_FRAGMENT(dualformer, m) {
  m.def("lsh_hash(Tensor x, Tensor planes) -> Tensor");
}

TORCH_LIBRARY_IMPL(dualformer, CPU, m) { m.impl("lsh_hash", &dualformer::lsh_hash); }
TORCH_LIBRARY_IMPL(dualformer, CUDA, m) { m.impl("lsh_hash", &dualformer::lsh_hash); }
