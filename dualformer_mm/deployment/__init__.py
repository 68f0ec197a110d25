# Copyright (c) dualformer-mm contributors.
"""Export DualFormer models to ONNX and check the files in ONNX Runtime.

What ``tools/deployment/pytorch2onnx.py`` and ``tools/deployment/benchmark_onnx.py`` run:

* :mod:`.targets`: the module to export for each part of a model (backbone, classifier,
  segmentor, detector backbone + FPN) beside the toolbox computation it must reproduce.
* :mod:`.onnx_export`: the export with the exporter this torch has, and the check in ONNX
  Runtime with the partitions ONNX Runtime chose.
* :mod:`.partitions`: the partitions MHPA chose in a run, recorded, compared or imposed.
* :mod:`.tensorrt`: the rewrite of ScatterND with a reduction into the ScatterElements that
  TensorRT's ONNX parser takes (imports ``onnx``; import it as
  ``dualformer_mm.deployment.tensorrt``).
* :mod:`.mmdeploy_support`: what mmdeploy 1.3.1 needs to export whole DualFormer detectors and
  segmentors (its rewriter registrations); imported by the deploy configs of
  ``configs/deploy`` through ``custom_imports``, or as
  ``dualformer_mm.deployment.mmdeploy_support`` (needs mmdeploy: ``requirements/deploy.txt``).

``import dualformer_mm`` does not import this package, and this package imports neither onnx
nor onnxruntime until a function needs them, so it loads where they are not installed.

Example:
    >>> from dualformer_mm.deployment import build_target, check_sizes
    >>> target = build_target('configs/mmpretrain/dualformer_t_in1k.py')  # doctest: +SKIP
    >>> check_sizes((512, 512), dynamic=True, divisor=32)
    [(512, 512), (64, 96)]
"""
from .onnx_export import (DYNAMIC_MULTIPLE, EXPORTERS, OPSET, CheckResult, DeploymentError, check,
                          check_sizes, dynamic_rewrites, export, export_checked, op_types,
                          resolve_exporter, session, strip_codes)
from .partitions import (CODES_PREFIX, TIE_MARGIN, CodesOutputs, PartitionRecord,
                         partition_attentions, partition_statistics, watch_partitions)
from .targets import DETECTOR_HEADS_NOTE, PARTS, ExportTarget, build_target

__all__ = [
    'CODES_PREFIX', 'CheckResult', 'CodesOutputs', 'DETECTOR_HEADS_NOTE', 'DYNAMIC_MULTIPLE',
    'DeploymentError', 'EXPORTERS', 'ExportTarget', 'OPSET', 'PARTS', 'PartitionRecord',
    'TIE_MARGIN', 'build_target', 'check', 'check_sizes', 'dynamic_rewrites', 'export',
    'export_checked', 'op_types', 'partition_attentions', 'partition_statistics',
    'resolve_exporter', 'session', 'strip_codes', 'watch_partitions'
]
