// Copyright (c) dualformer-mm contributors.
// Python module of the partition ops of MHPA (paper section 3.2). The ops themselves are
// registered with the dispatcher (torch.ops.dualformer.*) by the TORCH_LIBRARY blocks of the
// csrc/<op>.cpp files when this module is imported; the module only says what was compiled.
// pybind11 alone: this file needs no torch header.
#include <pybind11/pybind11.h>

namespace {

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused partition ops of DualFormer's MHPA (torch.ops.dualformer.*).";
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled in.");
}
