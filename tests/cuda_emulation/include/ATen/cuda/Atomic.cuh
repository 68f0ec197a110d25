// Copyright (c) dualformer-mm contributors.
// Stands in for ATen's <ATen/cuda/Atomic.cuh> when tests/cuda_emulation compiles the CUDA
// kernels with a C++ compiler: this folder comes first on the include path, so the kernels'
// `#include <ATen/cuda/Atomic.cuh>` finds this file, which supplies gpuAtomicAdd through the
// shim. Test code only.
#pragma once

#include "cuda_shim.h"
