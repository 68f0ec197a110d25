# dualformer-mm: `make test` / `make demo` on a fresh machine create .venv/, install the pinned
# stack (requirements/stack.txt) and this package, then run the tests / the three-task demo.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.dualformer-setup
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-full test-compat compat-toolboxes demo docs flops gpu-check \
	clean-venv

setup: $(STAMP)

# Re-run the install whenever a pin, the package metadata, the scripts, the CUDA build rule
# both builds read (cuda_build.py), the mmcv wheel planning (tools/install/mmcv_wheels.py) or a
# source of the compiled partition ops (dualformer_mm/ops/csrc) changes.
OPS_SOURCES := $(wildcard dualformer_mm/ops/csrc/*.h dualformer_mm/ops/csrc/*.cpp \
	dualformer_mm/ops/csrc/cpu/*.h dualformer_mm/ops/csrc/cpu/*.cpp \
	dualformer_mm/ops/csrc/cuda/*.cuh dualformer_mm/ops/csrc/cuda/*.cu)
$(STAMP): requirements/stack.txt requirements/tests.txt requirements/docs.txt \
		requirements/deploy.txt setup.py \
		tools/setup_env.sh \
		tools/install/compile_bytecode.sh \
		cuda_build.py tools/install/mmcv_wheels.py $(OPS_SOURCES)
	PYTHON=$(PYTHON) bash tools/setup_env.sh
	touch $@

# The main suite in the pinned stack on two pytest-xdist workers, its `slow` end-to-end runs
# included and its `full` size sweeps left out (pytest.ini), then the docs site, then
# test-compat.
XDIST := -n 2 --dist loadgroup
test: $(STAMP)
	$(VENV)/bin/python -m pytest tests $(XDIST) -m "not full" $(PYTEST_ARGS)
	$(MAKE) docs
	$(MAKE) test-compat

# The documentation site: docs/*.md and the API reference generated from the docstrings, as
# HTML in docs/_build/html. Any warning fails it (-W), broken cross-references included (-n).
DOCS_SRC ?= docs
DOCS_OUT ?= docs/_build/html
docs: $(STAMP)
	$(VENV)/bin/python -m sphinx -W --keep-going -n -q -b html -c docs $(DOCS_SRC) $(DOCS_OUT)

# The main suite without its end-to-end runs (pytest.ini's `slow` and `full` markers).
# Short tests only, handed out in chunks of consecutive tests (worksteal). On a 2-core AMD EPYC
# with the bytecode written: 208 s and 233 s, against 227 s handed out one at a time (loadgroup).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest tests -n 2 --dist worksteal -m "not slow and not full" \
		$(PYTEST_ARGS)

# The size sweeps too long for CI (every size exported to ONNX, ...).
test-full: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m full $(PYTEST_ARGS)

# The oldest and the newest corner of the support range (requirements/compat-*.txt: torch
# 2.1.2 on Python 3.9 with numpy 1.x and mmcv-lite 2.0.0; torch 2.15.0 on Python 3.12 with
# numpy 2.x and mmcv-lite 2.2.0), each in its own venv under .venv-compat/ holding only that
# torch, mmengine and mmcv-lite: dualformer_mm is installed as the README says (pip install
# --no-build-isolation ., -e . on the newest), the install must leave torch, mmcv-lite and
# numpy untouched, and the plugin's own tests that need no toolbox run there
# (tools/install/compat_env.sh).
COMPAT_TESTS := tests/test_compat.py tests/test_checkpoint_safety.py tests/test_backbone.py \
	tests/test_mhpa.py tests/test_layers.py tests/test_partition_ops.py \
	tests/test_ops_partition_ext.py tests/test_ops_backend.py tests/test_autocast.py \
	tests/test_numerics.py tests/test_metadata.py \
	tests/test_install.py::test_rule_queries_the_installed_torch_by_default \
	tests/test_install.py::test_setup_builds_cuda_only_with_a_cuda_torch_and_a_matching_nvcc \
	tests/test_install.py::test_setup_without_toolkit_or_asked_for_cpu_says_why
# Left out there: the one test of these files that builds the classifier through mmpretrain.
COMPAT_DESELECT := tests/test_ops_backend.py::test_flops_equal_with_both_backends
COMPAT_PYTEST_ARGS ?= -q -n 2 --dist worksteal -m "not slow and not full"
# One CUDA architecture is enough to show the kernels compile against that torch; an install
# without TORCH_CUDA_ARCH_LIST builds every architecture of the torch (cuda_build.py).
COMPAT_CUDA_ARCHS ?= 9.0
test-compat:
	bash tools/install/compat_env.sh oldest -- $(COMPAT_TESTS) \
		$(foreach d,$(COMPAT_DESELECT),--deselect '$(d)') $(COMPAT_PYTEST_ARGS)
	TORCH_CUDA_ARCH_LIST='$(COMPAT_CUDA_ARCHS)' bash tools/install/compat_env.sh newest \
		--editable -- $(COMPAT_TESTS) $(foreach d,$(COMPAT_DESELECT),--deselect '$(d)') \
		$(COMPAT_PYTEST_ARGS)

# Not in CI: mmcv 2.1.0 built against a corner's torch (cached in ~/.cache/dualformer-mm like
# the main install's), mmdet, mmseg and mmpretrain, then every config (build, a training step,
# predict) and the demo's three tasks for 2 iterations each. CORNER names a
# requirements/compat-CORNER-toolboxes.txt: oldest (torch 2.1.2) or newest (torch 2.14.1, the
# newest torch the registry serves a torchvision for, which mmpretrain imports).
CORNER ?= oldest
# Every config of every size: the slow ones included.
TOOLBOX_PYTEST_ARGS ?= -q -n 2 --dist worksteal -m "not full"
compat-toolboxes:
	bash tools/install/compat_env.sh $(CORNER) --toolboxes --demo -- tests/test_configs.py \
		tests/test_toolboxes.py $(TOOLBOX_PYTEST_ARGS)

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
