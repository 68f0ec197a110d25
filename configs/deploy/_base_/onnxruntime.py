# What every deploy config of this folder shares: mmdeploy 1.3.1's ONNX export (the fields of
# its configs/_base_/onnx_config.py) at opset 18, run by ONNX Runtime, with the mends of
# dualformer_mm.deployment.mmdeploy_support.
#
# custom_imports: mmengine's Config.fromfile imports what a config names, and every step of
# mmdeploy's tools/deploy.py runs in a spawned process that loads the deploy config, so the
# mends are registered wherever mmdeploy exports or runs.
custom_imports = dict(
    imports=['dualformer_mm', 'dualformer_mm.deployment.mmdeploy_support'],
    allow_failed_imports=False)

onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    # DualFormer's partition max is ScatterElements(reduction='max'): opset 18.
    opset_version=18,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
    # mmdeploy's graph optimiser is a compiled TorchScript pass built for torch <= 2.1.
    optimize=False)

backend_config = dict(type='onnxruntime')
