// Copyright (c) dualformer-mm contributors.
// The CUDA kernels of dualformer_mm (ops/csrc/cuda/partition_kernels.cuh), started by the
// launch code of the CUDA build (ops/csrc/cuda/partition_launch.cuh), run on the CPU as
// torch.ops.dualformer_cuda_emulation.*. Test code: tests/cuda_emulation/__init__.py compiles
// it with a C++ compiler; it is not part of the package.
//
// Every op takes the launch to emulate as its last two arguments: the device's number of
// multiprocessors (which caps the grid, so a small number makes the grid-stride loops go
// round several times) and whether blocks and threads run in reverse order (atomics then add
// in another order, and a kernel whose result depended on the order would show it).
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "cuda_shim.h"
#include "partition_launch.cuh"

namespace dualformer_emulation {
namespace {

using at::Tensor;

// (blocks, threads) of every launch since the last call of `launches`.
std::vector<int64_t>& launch_log() {
  static std::vector<int64_t> log;
  return log;
}

// Runs a grid as loops: block by block, and in each block thread by thread (see cuda_shim.h
// for why running threads one after another is exact for these kernels).
class EmulatedLauncher {
 public:
  EmulatedLauncher(int64_t multiprocessors, bool reverse)
      : multiprocessors_(multiprocessors), reverse_(reverse) {
    TORCH_CHECK(multiprocessors >= 1, "multiprocessors must be >= 1, got ", multiprocessors);
  }

  int64_t multiprocessors() const { return multiprocessors_; }

  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), unsigned int blocks, unsigned int threads,
                  Args... args) const {
    // CUDA's limits for a one-dimensional launch.
    TORCH_CHECK(blocks >= 1 && blocks <= 2147483647u && threads >= 1 && threads <= 1024,
                "invalid launch: ", blocks, " blocks of ", threads, " threads");
    launch_log().push_back(blocks);
    launch_log().push_back(threads);
    gridDim = {blocks, 1, 1};
    blockDim = {threads, 1, 1};
    for (unsigned int b = 0; b < blocks; ++b) {
      blockIdx = {reverse_ ? blocks - 1 - b : b, 0, 0};
      for (unsigned int t = 0; t < threads; ++t) {
        threadIdx = {reverse_ ? threads - 1 - t : t, 0, 0};
        kernel(args...);
      }
    }
  }

 private:
  int64_t multiprocessors_;
  bool reverse_;
};

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "the emulation runs on CPU tensors; ", name, " is on ",
              t.device());
}

Tensor launches() {
  auto& log = launch_log();
  Tensor out = at::tensor(log, at::kLong).view({-1, 2});
  log.clear();
  return out;
}

// The op entries (csrc/<op>.cpp) hand the launchers contiguous tensors; so do these.
Tensor lsh_pack(const Tensor& proj, int64_t sms, bool reverse) {
  check_cpu(proj, "proj");
  return dualformer::cuda::lsh_pack(EmulatedLauncher(sms, reverse), proj.contiguous());
}

std::tuple<Tensor, Tensor> softmax_pool_forward(const Tensor& scores, const Tensor& values,
                                                const Tensor& codes, int64_t parts,
                                                int64_t sms, bool reverse) {
  check_cpu(values, "values");
  return dualformer::cuda::softmax_pool_forward(EmulatedLauncher(sms, reverse),
                                                scores.contiguous(), values.contiguous(),
                                                codes.contiguous(), parts);
}

std::tuple<Tensor, Tensor> softmax_pool_backward(const Tensor& grad, const Tensor& scores,
                                                 const Tensor& values, const Tensor& codes,
                                                 const Tensor& stats, int64_t sms,
                                                 bool reverse) {
  check_cpu(values, "values");
  return dualformer::cuda::softmax_pool_backward(
      EmulatedLauncher(sms, reverse), grad.contiguous(), scores.contiguous(),
      values.contiguous(), codes.contiguous(), stats.contiguous());
}

std::tuple<Tensor, Tensor> softmax_forward(const Tensor& scores, const Tensor& codes,
                                           int64_t parts, int64_t sms, bool reverse) {
  check_cpu(scores, "scores");
  return dualformer::cuda::softmax_forward(EmulatedLauncher(sms, reverse), scores.contiguous(),
                                           codes.contiguous(), parts);
}

Tensor softmax_backward(const Tensor& grad, const Tensor& scores, const Tensor& codes,
                        const Tensor& stats, int64_t sms, bool reverse) {
  check_cpu(scores, "scores");
  return dualformer::cuda::softmax_backward(EmulatedLauncher(sms, reverse), grad.contiguous(),
                                            scores.contiguous(), codes.contiguous(),
                                            stats.contiguous());
}

std::tuple<Tensor, Tensor> mean_forward(const Tensor& x, const Tensor& codes, int64_t parts,
                                        int64_t sms, bool reverse) {
  check_cpu(x, "x");
  return dualformer::cuda::mean_forward(EmulatedLauncher(sms, reverse), x.contiguous(),
                                        codes.contiguous(), parts);
}

Tensor mean_backward(const Tensor& grad, const Tensor& codes, const Tensor& counts,
                     int64_t sms, bool reverse) {
  check_cpu(grad, "grad");
  return dualformer::cuda::mean_backward(EmulatedLauncher(sms, reverse), grad.contiguous(),
                                         codes.contiguous(), counts.contiguous());
}

Tensor distribute_forward(const Tensor& pooled, const Tensor& codes, int64_t sms,
                          bool reverse) {
  check_cpu(pooled, "pooled");
  return dualformer::cuda::distribute_forward(EmulatedLauncher(sms, reverse),
                                              pooled.contiguous(), codes.contiguous());
}

Tensor distribute_backward(const Tensor& grad, const Tensor& codes, int64_t parts,
                           int64_t sms, bool reverse) {
  check_cpu(grad, "grad");
  return dualformer::cuda::distribute_backward(EmulatedLauncher(sms, reverse),
                                               grad.contiguous(), codes.contiguous(), parts);
}

}  // namespace
}  // namespace dualformer_emulation

TORCH_LIBRARY(dualformer_cuda_emulation, m) {
  using namespace dualformer_emulation;
  m.def("launches() -> Tensor", &launches);
  m.def("lsh_pack(Tensor proj, int sms, bool reverse) -> Tensor", &lsh_pack);
  m.def("softmax_pool_forward(Tensor scores, Tensor values, Tensor codes, int parts, int sms, "
        "bool reverse) -> (Tensor, Tensor)", &softmax_pool_forward);
  m.def("softmax_pool_backward(Tensor grad, Tensor scores, Tensor values, Tensor codes, "
        "Tensor stats, int sms, bool reverse) -> (Tensor, Tensor)", &softmax_pool_backward);
  m.def("softmax_forward(Tensor scores, Tensor codes, int parts, int sms, bool reverse)"
        " -> (Tensor, Tensor)", &softmax_forward);
  m.def("softmax_backward(Tensor grad, Tensor scores, Tensor codes, Tensor stats, int sms, "
        "bool reverse) -> Tensor", &softmax_backward);
  m.def("mean_forward(Tensor x, Tensor codes, int parts, int sms, bool reverse)"
        " -> (Tensor, Tensor)", &mean_forward);
  m.def("mean_backward(Tensor grad, Tensor codes, Tensor counts, int sms, bool reverse)"
        " -> Tensor", &mean_backward);
  m.def("distribute_forward(Tensor pooled, Tensor codes, int sms, bool reverse) -> Tensor",
        &distribute_forward);
  m.def("distribute_backward(Tensor grad, Tensor codes, int parts, int sms, bool reverse)"
        " -> Tensor", &distribute_backward);
}
