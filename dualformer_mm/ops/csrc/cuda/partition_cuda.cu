// Copyright (c) dualformer-mm contributors.
// CUDA launchers of the partition ops of MHPA (paper section 3.2, eqs. 4-9): fp32, fp16, bf16
// (and fp64 for gradcheck), on the current stream of the inputs' device, with no host
// synchronisation (K is passed in; buffers are filled with ATen ops on the same stream).
// What each op allocates and launches is in partition_launch.cuh; this file supplies the
// device: its guard, its stream and the <<<>>> launch.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../partition_ops.h"
#include "partition_launch.cuh"

namespace dualformer {
namespace {

// Launches on the current stream of the current device: construct it after the device guard.
class CudaLauncher {
 public:
  CudaLauncher()
      : stream_(at::cuda::getCurrentCUDAStream()),
        multiprocessors_(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) {}

  int64_t multiprocessors() const { return multiprocessors_; }

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), unsigned int blocks, unsigned int threads,
                  Args... args) const {
    kernel<<<blocks, threads, 0, stream_>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

 private:
  cudaStream_t stream_;
  int64_t multiprocessors_;
};

}  // namespace

Tensor lsh_pack_cuda(const Tensor& proj) {
  const at::cuda::OptionalCUDAGuard guard(proj.device());
  return cuda::lsh_pack(CudaLauncher(), proj);
}

std::tuple<Tensor, Tensor> softmax_pool_forward_cuda(const Tensor& scores, const Tensor& values,
                                                     const Tensor& codes, int64_t parts) {
  const at::cuda::OptionalCUDAGuard guard(values.device());
  return cuda::softmax_pool_forward(CudaLauncher(), scores, values, codes, parts);
}

std::tuple<Tensor, Tensor> softmax_pool_backward_cuda(const Tensor& grad, const Tensor& scores,
                                                      const Tensor& values, const Tensor& codes,
                                                      const Tensor& stats) {
  const at::cuda::OptionalCUDAGuard guard(values.device());
  return cuda::softmax_pool_backward(CudaLauncher(), grad, scores, values, codes, stats);
}

std::tuple<Tensor, Tensor> softmax_forward_cuda(const Tensor& scores, const Tensor& codes,
                                                int64_t parts) {
  const at::cuda::OptionalCUDAGuard guard(scores.device());
  return cuda::softmax_forward(CudaLauncher(), scores, codes, parts);
}

Tensor softmax_backward_cuda(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                             const Tensor& stats) {
  const at::cuda::OptionalCUDAGuard guard(scores.device());
  return cuda::softmax_backward(CudaLauncher(), grad, scores, codes, stats);
}

std::tuple<Tensor, Tensor> mean_forward_cuda(const Tensor& x, const Tensor& codes, int64_t parts) {
  const at::cuda::OptionalCUDAGuard guard(x.device());
  return cuda::mean_forward(CudaLauncher(), x, codes, parts);
}

Tensor mean_backward_cuda(const Tensor& grad, const Tensor& codes, const Tensor& counts) {
  const at::cuda::OptionalCUDAGuard guard(grad.device());
  return cuda::mean_backward(CudaLauncher(), grad, codes, counts);
}

Tensor distribute_forward_cuda(const Tensor& pooled, const Tensor& codes) {
  const at::cuda::OptionalCUDAGuard guard(pooled.device());
  return cuda::distribute_forward(CudaLauncher(), pooled, codes);
}

Tensor distribute_backward_cuda(const Tensor& grad, const Tensor& codes, int64_t parts) {
  const at::cuda::OptionalCUDAGuard guard(grad.device());
  return cuda::distribute_backward(CudaLauncher(), grad, codes, parts);
}

}  // namespace dualformer
