# Copyright (c) dualformer-mm contributors.
"""Everything GPU-specific, checked in one command: ``tools/gpu_check.sh`` (``make gpu-check``).

Writes ``work_dirs/gpu_check/report.json`` and ``report.md`` (``--out`` elsewhere). Each step
runs in its own process (a CUDA error that poisons one process cannot stop the others), records
pass/fail/skipped, its time and its figures; the exit status is 1 when a step failed.

Tier 1 needs torch in the range this package supports (``dualformer_mm.compat``: 2.1 up to
the newest tested release), mmengine, mmcv (mmcv-lite will do) and this package:

* ``environment``: versions, GPUs, what mmcv and ``dualformer_mm._ext`` were compiled with.
* ``build_ext``: ``setup.py build_ext --inplace`` for the visible GPU only (the rule of
  ``cuda_build.py`` with ``TORCH_CUDA_ARCH_LIST`` unset), CUDA required.
* ``cuda_tests``: ``pytest -m cuda`` over the test files that have CUDA cases.
* ``train_step``: one forward+backward of DualFormer-S with BN and with GN, in fp32 and under
  fp16 and bf16 autocast, with the CUDA kernels and with the reference ops from the same
  weights and input: finite losses, gradients equal within a tolerance per precision.
* ``bench_ops``: ``tools/benchmarks/bench_ops.py --device cuda``: kernels against reference,
  and the softmax pool's bandwidth as a fraction of a device-to-device copy.
* ``throughput``: ``tools/benchmarks/throughput.py --device cuda --amp`` at 224x224 with
  ``DUALFORMER_OPS=ext``, DualFormer-XS and -S against Swin-T and ConvNeXt-T.

Tier 2 adds, when mmpretrain, mmdet, mmseg and an mmcv with CUDA ops are installed:

* ``train_cls``, ``train_det``, ``train_seg``: one ``tools/train.py --amp`` iteration of
  ``dualformer_s_in1k``, ``mask_rcnn_dualformer_s_1x`` and ``upernet_dualformer_s_ade20k`` on
  a few generated images, then one predict step of the trained model (SyncBN as the configs
  have it with 2+ GPUs, through ``tools/dist_train.sh``; BN on one GPU).
* ``dist_train_det``: with 2+ GPUs, ``tools/dist_train.sh`` on the detection demo config for
  four iterations.

The report ends with the line that says whether the CUDA kernels matched the reference on
this GPU (``build_ext``, ``cuda_tests`` and ``train_step`` all passed), and so whether to set
``DUALFORMER_OPS=ext`` on this machine (the default, ``auto``, runs the reference ops on CUDA
until the kernels are verified).

Without a GPU the check exits 2 with a one-line reason. ``--dry-run`` runs every step it can
on the CPU at tiny sizes, skipping those that need CUDA, which is how CI tests it.

Targets printed in the report (judged on a GPU only): every CUDA test passes; the fused
partition pipeline at least 3x the reference; the softmax pool at least 60% of the copy's
bandwidth; DualFormer-XS at least 1.7x the images/s of Swin-T under AMP at 224x224.

Modules: :mod:`.run` (the steps in order and the runner), :mod:`.tier1`,
:mod:`.tier1_kernels`, :mod:`.tier1_bench`, :mod:`.tier2`, :mod:`.tier2_config`,
:mod:`.predict_hook` (loaded by the tier-2 training processes), :mod:`.bench_ops_dry` and
:mod:`.report`. ``tools/gpu_check.sh`` runs ``python -m gpu_check`` with ``tools/`` and the
checkout on ``PYTHONPATH``.

Example:
    bash tools/gpu_check.sh                      # on a GPU machine
    bash tools/gpu_check.sh --dry-run            # anywhere, tiny sizes, CPU
    bash tools/gpu_check.sh --steps train_step bench_ops --out /tmp/gpu_check
    bash tools/gpu_check.sh --tier 1             # tier 1 only
"""
