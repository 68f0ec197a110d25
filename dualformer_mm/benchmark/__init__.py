# Copyright (c) dualformer-mm contributors.
"""Shared pieces of the backbone benchmarks (paper section 4.4, Table 6, and section 3.2).

Used by the scripts of ``tools/benchmarks``: ``throughput.py`` (images/s, the comparison of
Table 6 of "DualFormer: Dual Path Transformer with Partition Attention"),
``resolution_scaling.py`` (latency and memory against input size, the linear-complexity claim
of MHPA in section 3.2), ``train_step.py`` (training steps of the backbones and of Mask R-CNN)
and ``bench_ops.py`` (the partition ops); and by ``tools/deployment/benchmark_onnx.py`` and
``benchmark_deploy.py``.
``import dualformer_mm`` does not import this package.

* :mod:`.zoo`: the benchmarked backbones by name and where each comes from (this package,
  mmpretrain, mmdet, or timm through :mod:`.timm_features`).
* :mod:`.detectors`: the Mask R-CNNs of the training benchmark, built from their configs.
* :mod:`.options`: the shared command-line options, the :class:`~.options.Settings` they give,
  and what they do to a model and its input.
* :mod:`.measure`: interleaved timing and the peak memory of a call.
* :mod:`.ratios`: ratios to Swin-T.
* :mod:`.output`: the environment of a run, JSON and charts.
* :mod:`.train_report`: the tables and chart of ``train_step.py``.
* :mod:`.deployed`: whole models deployed with mmdeploy, ONNX Runtime against PyTorch eager
  (``benchmark_deploy.py``).
* :mod:`.errors`: the errors the scripts report without a traceback.

Nothing here imports a toolbox or timm at module level: a machine with only torch, timm and
this package runs the DualFormer and timm models.

Example:
    >>> from dualformer_mm.benchmark import ratios
    >>> rows = [dict(model='dualformer-s', ms=50.0), dict(model='swin-t', ms=100.0)]
    >>> ratios.add_ratio(rows, 'ms', 'ms_ratio'); [r['ms_ratio'] for r in rows]
    [0.5, 1.0]
"""
