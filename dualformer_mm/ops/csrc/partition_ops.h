// Copyright (c) dualformer-mm contributors.
// Declarations of the partition kernels of Multi-Head Partition Attention (paper section 3.2,
// eqs. 4-9), shared by the device-agnostic entries (csrc/<op>.cpp), the OpenMP kernels
// (csrc/cpu/) and the CUDA kernels (csrc/cuda/).
//
// Shapes: scores/values/x (G, N, D) with G = batch * heads; codes (G, N) int64 in [0, K);
// pooled (G, K, D). The entries make every input contiguous before a kernel runs, so the
// kernels index plain row-major buffers.
#pragma once

// Only the Tensor class: ATen/ATen.h declares every op and triples the compile time.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace dualformer {

using at::Tensor;

// Fused LSH hash: x (B, H, N, D) with any strides, planes (H, D, P); codes (B, H, N) with
// code = sum_b 2^b [x . planes[:, b] >= 0], the projection computed in float64.
Tensor lsh_hash_cpu(const Tensor& x, const Tensor& planes);
// Softmax pooling forward: pooled (G, K, D) in the values' dtype and stats (2, G, K, D) in the
// accumulation dtype: stats[0] = log-sum-exp of the partition's scores (-inf when it is
// empty), stats[1] = pooled before rounding to a half dtype (the backward needs v - pooled
// at full precision).
std::tuple<Tensor, Tensor> softmax_pool_forward_cpu(const Tensor& scores, const Tensor& values,
                                                    const Tensor& codes, int64_t num_partitions);
std::tuple<Tensor, Tensor> softmax_pool_backward_cpu(const Tensor& grad, const Tensor& scores,
                                                     const Tensor& values, const Tensor& codes,
                                                     const Tensor& stats);
// Per-token softmax over each partition: weights (G, N, D) in the scores' dtype and stats
// (2, G, K, D) in the accumulation dtype: stats[0] = the partition's maximum score, stats[1] =
// the sum of exp(s - max) (an empty partition has -inf and 0; no token reads them).
std::tuple<Tensor, Tensor> softmax_forward_cpu(const Tensor& scores, const Tensor& codes,
                                               int64_t num_partitions);
Tensor softmax_backward_cpu(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                            const Tensor& stats);
std::tuple<Tensor, Tensor> mean_forward_cpu(const Tensor& x, const Tensor& codes,
                                            int64_t num_partitions);
Tensor mean_backward_cpu(const Tensor& grad, const Tensor& codes, const Tensor& counts);
Tensor distribute_forward_cpu(const Tensor& pooled, const Tensor& codes);
Tensor distribute_backward_cpu(const Tensor& grad, const Tensor& codes, int64_t num_partitions);

#ifdef WITH_CUDA
// Packs the sign bits of projections (..., P) into codes (...): code = sum_b 2^b [proj_b >= 0].
Tensor lsh_pack_cuda(const Tensor& proj);
std::tuple<Tensor, Tensor> softmax_pool_forward_cuda(const Tensor& scores, const Tensor& values,
                                                     const Tensor& codes, int64_t num_partitions);
std::tuple<Tensor, Tensor> softmax_pool_backward_cuda(const Tensor& grad, const Tensor& scores,
                                                      const Tensor& values, const Tensor& codes,
                                                      const Tensor& stats);
std::tuple<Tensor, Tensor> softmax_forward_cuda(const Tensor& scores, const Tensor& codes,
                                                int64_t num_partitions);
Tensor softmax_backward_cuda(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                             const Tensor& stats);
std::tuple<Tensor, Tensor> mean_forward_cuda(const Tensor& x, const Tensor& codes,
                                             int64_t num_partitions);
Tensor mean_backward_cuda(const Tensor& grad, const Tensor& codes, const Tensor& counts);
Tensor distribute_forward_cuda(const Tensor& pooled, const Tensor& codes);
Tensor distribute_backward_cuda(const Tensor& grad, const Tensor& codes, int64_t num_partitions);
#endif

}  // namespace dualformer

// Calls `name##_cpu` or `name##_cuda` for the device of `tensor`; a CUDA tensor given to a
// build without CUDA gets an error that says which piece is missing (mmcv's
// "implementation for device X not found", with the fix).
#ifdef WITH_CUDA
#define DUALFORMER_DISPATCH_DEVICE(tensor, name, ...)                                  \
  ((tensor).is_cuda() ? name##_cuda(__VA_ARGS__) : name##_cpu(__VA_ARGS__))
#else
namespace dualformer {
inline void check_not_cuda(const at::Tensor& tensor, const char* op) {
  TORCH_CHECK(!tensor.is_cuda(), "dualformer_mm._ext was built without CUDA, so ", op,
              " has no CUDA kernel; rebuild with a CUDA toolkit and a CUDA-enabled torch "
              "(pip install --no-build-isolation -e .)");
}
}  // namespace dualformer
#define DUALFORMER_DISPATCH_DEVICE(tensor, name, ...) \
  (check_not_cuda((tensor), #name), name##_cpu(__VA_ARGS__))
#endif

// Argument checks shared by every entry.
#define DUALFORMER_CHECK_GND(t, name)                                                    \
  TORCH_CHECK((t).dim() == 3, name " must be (G, N, D), got ", (t).sizes());             \
  TORCH_CHECK(at::isFloatingType((t).scalar_type()), name " must be floating point, got ", \
              (t).scalar_type())
// codes (G, N) int64 on the device of `t`, a (G, K, D) tensor (partition features or their
// gradient) that fixes G only.
#define DUALFORMER_CHECK_GROUP_CODES(codes, t, name)                                      \
  TORCH_CHECK((codes).scalar_type() == at::kLong && (codes).dim() == 2 &&                 \
                  (codes).size(0) == (t).size(0),                                         \
              "codes must be int64 (G, N) with G = ", (t).size(0), ", got ",              \
              (codes).scalar_type(), " ", (codes).sizes());                                \
  TORCH_CHECK((codes).device() == (t).device(), "codes and " name " must share a device")
#define DUALFORMER_CHECK_CODES(codes, ref)                                               \
  TORCH_CHECK((codes).scalar_type() == at::kLong, "codes must be int64, got ",           \
              (codes).scalar_type());                                                     \
  TORCH_CHECK((codes).dim() == 2 && (codes).size(0) == (ref).size(0) &&                  \
                  (codes).size(1) == (ref).size(1),                                       \
              "codes must be (G, N) = ", (ref).sizes().slice(0, 2), ", got ", (codes).sizes()); \
  TORCH_CHECK((codes).device() == (ref).device(), "codes and features must share a device")
