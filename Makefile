# dualformer-mm: `make test` / `make demo` on a fresh machine create .venv/, install the pinned
# stack (requirements/stack.txt) and this package, then run the tests / the three-task demo.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.dualformer-setup
PYTEST_ARGS ?=

.PHONY: setup test demo flops gpu-check clean-venv

setup: $(STAMP)

# Re-run the install whenever a pin, the package metadata, the script, the CUDA build rule
# both builds read (cuda_build.py), the mmcv wheel planning (tools/install/mmcv_wheels.py) or a
# source of the compiled partition ops (dualformer_mm/ops/csrc) changes.
OPS_SOURCES := $(wildcard dualformer_mm/ops/csrc/*.h dualformer_mm/ops/csrc/*.cpp \
	dualformer_mm/ops/csrc/cpu/*.h dualformer_mm/ops/csrc/cpu/*.cpp \
	dualformer_mm/ops/csrc/cuda/*.cuh dualformer_mm/ops/csrc/cuda/*.cu)
$(STAMP): requirements/stack.txt requirements/tests.txt setup.py tools/setup_env.sh \
		cuda_build.py tools/install/mmcv_wheels.py $(OPS_SOURCES)
	PYTHON=$(PYTHON) bash tools/setup_env.sh
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

# Trains and evaluates DualFormer-T on classification, detection and segmentation with data
# the project makes itself (data/demo/), writing work_dirs/demo/summary.{json,md} and PNGs.
demo: $(STAMP)
	$(VENV)/bin/python tools/run_demo.py

flops: $(STAMP)
	$(VENV)/bin/python tools/analysis/get_flops.py --paper

# On a GPU machine: builds the CUDA kernels for the visible GPU and checks CUDA tests, AMP
# training steps, kernel speed and throughput, then the real configs (docs/gpu.md); writes
# work_dirs/gpu_check/report.{json,md}. GPU_CHECK_ARGS=--dry-run runs it on the CPU.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	PYTHON=$(VENV)/bin/python bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
