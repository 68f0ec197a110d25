"""ONNX export of the backbone, classifier, segmentor and detector backbone+FPN
(tools/deployment/pytorch2onnx.py), each checked in ONNX Runtime against the toolbox's own
PyTorch computation.

In make test (the exports are ``slow``: tens of seconds each), the repository's T configs with
a DualFormer of one block per stage (``tests.utils.TINY_ARCH``): a dynamic backbone export
checked where an MHPA sees fewer tokens than partitions (64x96: 6 tokens for 8 partitions) and
where all see many more (224x160 at least 35, up to 140); the segmentor's whole inference and
the detector's backbone+FPN at 64x64; the classifier through the command line with a
checkpoint. The TorchScript exporter of torch 2.1-2.4 on DualFormer-T. Every size, every part:
the ``full`` sweep (make test-full).
"""
import doctest
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from dualformer_mm import compat
from dualformer_mm.utils import build_model_from_cfg
from tests.utils import ARCHS, TINY_ARCH, load_script

pytest.importorskip('onnx', reason='onnx is not installed (requirements/tests.txt pins it)')
ort = pytest.importorskip('onnxruntime',
                          reason='onnxruntime is not installed (requirements/tests.txt pins it)')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools', 'deployment')
# After the skips: the tensorrt module imports onnx.
from dualformer_mm.deployment import onnx_export, targets, tensorrt  # noqa: E402

pytorch2onnx = load_script('tools/deployment/pytorch2onnx.py')

CLS = osp.join(ROOT, 'configs', 'mmpretrain', 'dualformer_{}_in1k.py')
SEG = osp.join(ROOT, 'configs', 'mmseg', 'upernet_dualformer_{}_ade20k.py')
DET = osp.join(ROOT, 'configs', 'mmdet', 'mask_rcnn_dualformer_{}_1x.py')
# Outputs are O(1); ONNX Runtime and PyTorch differ by float32 rounding (1e-7..1e-6 measured).
ATOL = 1e-4


def _tiny_config(tmp_path, config: str) -> str:
    """``config`` (a T config of the repository) with one block per stage, its heads' input
    channels to match. Every size exports the same operators (the ``full`` sweep checks each);
    the four exports below took 188 s with T's two to four blocks per stage and 83 s with this
    (2-core AMD EPYC, two xdist workers)."""
    channels = TINY_ARCH['channels']
    heads = {CLS.format('t'): dict(head=dict(in_channels=channels[-1])),
             SEG.format('t'): dict(decode_head=dict(in_channels=channels),
                                   auxiliary_head=dict(in_channels=channels[2])),
             DET.format('t'): dict(neck=dict(in_channels=channels))}[config]
    model = dict(backbone=dict(arch=dict(TINY_ARCH, _delete_=True)), **heads)
    path = tmp_path / f'tiny_{osp.basename(config)}'
    path.write_text(f'_base_ = [{config!r}]\nmodel = {model!r}\n')
    return str(path)


def _randomise_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics away from 0/1, so that the check sees them used."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def _tie_free(target, shape):
    """A seeded image of ``shape`` with no token near an LSH hyperplane: on such an image
    ONNX Runtime and PyTorch partition alike and differ by rounding only."""
    images, margin = onnx_export.tie_free_images(target, shape)
    assert margin is None or margin >= onnx_export.TIE_MARGIN, \
        f'{onnx_export.TIE_FREE_DRAWS} seeded images of {shape} all have a near tie ' \
        f'(widest {margin})'
    return images


def _export_and_check(target, tmp_path, shape, dynamic=False, sizes=None, exporter='auto'):
    _randomise_statistics(target.module)
    path = str(tmp_path / 'model.onnx')
    images = torch.randn(*shape)
    used = onnx_export.export(target.module, images, path, target.output_names, dynamic=dynamic,
                        exporter=exporter)
    session = onnx_export.session(path)
    results = [onnx_export.check(target, path, _tie_free(target, s), session)
               for s in (sizes or [shape])]
    return used, path, results


@pytest.mark.slow
def test_backbone_dynamic_export_in_both_partition_regimes(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, CLS.format('t')), part='backbone')
    assert target.output_names == ['stage1', 'stage2', 'stage3', 'stage4']
    _, path, (few, many, batch3) = _export_and_check(
        target, tmp_path, (2, 3, 64, 96), dynamic=True,
        sizes=[(2, 3, 64, 96), (1, 3, 224, 160), (3, 3, 128, 64)])
    assert few.min_tokens < few.partitions == 8  # stage 4: a 2x3 map, 6 tokens
    assert many.min_tokens >= 4 * many.partitions and many.max_tokens == 140
    for result in (few, many, batch3):
        assert result.max_abs_diff <= ATOL, result.describe()
        assert result.max_abs_ref > 0.1  # the outputs are not all near zero
    # The partition ops became native ONNX operators (their reference decomposition).
    types = onnx_export.op_types(path)
    assert {'ScatterElements', 'ScatterND', 'Einsum'} <= set(types)
    assert not [op for op in types if 'dualformer' in op.lower()]
    # For TensorRT's parser: no ScatterND with a reduction, the same numbers.
    assert tensorrt.rewrite_file(path) == (types['ScatterND'], 0)
    types_trt = onnx_export.op_types(path)
    assert 'ScatterND' not in types_trt
    assert types_trt['ScatterElements'] == types['ScatterElements'] + types['ScatterND']
    session = onnx_export.session(path)
    for shape in ((2, 3, 64, 96), (1, 3, 224, 160)):
        result = onnx_export.check(target, path, _tie_free(target, shape), session)
        assert result.max_abs_diff <= ATOL, result.describe()


@pytest.mark.slow
def test_segmentor_export_is_the_whole_inference(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, SEG.format('t')))
    assert target.output_names == ['seg_logits']
    _, path, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64))
    assert result.max_abs_diff <= ATOL, result.describe()
    # Resized to the input inside the graph: 150 ADE20K classes at 64x64.
    session = onnx_export.session(path)
    assert session.run(None, {'images': torch.randn(1, 3, 64, 64).numpy()})[0].shape == \
        (1, 150, 64, 64)


@pytest.mark.slow
def test_detector_export_is_backbone_and_fpn(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, DET.format('t')))
    assert target.output_names == [f'fpn{i}' for i in range(5)] and target.size_divisor == 32
    assert 'mmdeploy' in targets.DETECTOR_HEADS_NOTE
    _, path, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64))
    assert result.max_abs_diff <= ATOL, result.describe()
    outs = onnx_export.session(path).run(None, {'images': torch.randn(1, 3, 64, 64).numpy()})
    assert [o.shape for o in outs] == [(1, 256, 16, 16), (1, 256, 8, 8), (1, 256, 4, 4),
                                       (1, 256, 2, 2), (1, 256, 1, 1)]


@pytest.mark.slow
def test_command_line_classifier_with_checkpoint(tmp_path):
    config = _tiny_config(tmp_path, CLS.format('t'))
    classifier = _randomise_statistics(build_model_from_cfg(config)).eval()
    checkpoint, out = str(tmp_path / 'cls.pth'), str(tmp_path / 'cls.onnx')
    torch.save(dict(meta=dict(epoch=1), state_dict=classifier.state_dict()), checkpoint)
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'pytorch2onnx.py'), config, checkpoint,
         '--out', out, '--shape', '64', '64'], cwd=ROOT, capture_output=True, text=True,
        timeout=900, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'classifier logits' in result.stdout and f'loaded {checkpoint}' in result.stdout
    assert 'opset 18' in result.stdout and 'max |onnxruntime - pytorch|' in result.stdout
    # The file holds the checkpoint's weights.
    x = _tie_free(targets.build_target(config, checkpoint), (1, 3, 64, 64))
    got = onnx_export.session(out).run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        want = classifier(x, mode='tensor')
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=ATOL)


def test_torchscript_exporter(tmp_path):
    # The only exporter of torch 2.1-2.4; forced here on this torch.
    target = targets.build_target(CLS.format('t'), part='backbone')
    used, _, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64),
                                            exporter='torchscript')
    assert used == 'torchscript'
    assert result.max_abs_diff <= ATOL, result.describe()


def test_bad_requests_name_what_is_accepted(capsys):
    with pytest.raises(ValueError, match=r"--part must be one of \('auto', 'backbone', "
                       r"'classifier'\) for a mmpretrain config, got 'segmentor'"):
        targets.build_target(CLS.format('t'), part='segmentor')
    assert pytorch2onnx.main([DET.format('t'), '--out', 'x.onnx', '--shape', '100', '96']) == 2
    assert 'multiples of 32' in capsys.readouterr().err
    assert pytorch2onnx.main([CLS.format('t'), '--out', 'x.onnx', '--shape', '65', '64',
                              '--dynamic']) == 2
    assert '--dynamic takes sides that are multiples of 32' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pytorch2onnx.parse_args([CLS.format('t'), '--out', 'x.onnx', '--shape', '64', '64',
                                 '--check-shape', '96', '96'])
    assert '--check-shape needs --dynamic' in capsys.readouterr().err
    if not compat.HAS_DYNAMO_ONNX_EXPORT:
        with pytest.raises(onnx_export.DeploymentError, match='needs torch >= 2.5'):
            onnx_export.resolve_exporter('dynamo')
    assert not osp.exists('x.onnx')


def test_margin_is_the_smallest_cos_of_a_token_to_a_plane():
    from dualformer_mm import DualFormer, PartitionAttention
    torch.manual_seed(0)
    net = DualFormer(TINY_ARCH).eval()
    attn = next(m for m in net.modules() if isinstance(m, PartitionAttention))
    heads, dims, _ = attn.planes.shape
    tokens = torch.randn(2, heads, 6, dims)
    # Token 3 of head 0 at cos 1e-4 to plane 1 (the random others are far from any plane).
    normal = attn.planes[0, :, 1] / attn.planes[0, :, 1].norm()
    along = torch.randn(dims)
    along -= (along @ normal) * normal
    tokens[1, 0, 3] = 5 * (along / along.norm() + 1e-4 * normal) / (1 + 1e-8) ** 0.5
    plain = attn.partition_codes(tokens)
    with targets.partition_statistics(net) as stats:
        recorded = attn.partition_codes(tokens)
    assert stats == dict(margin=pytest.approx(1e-4, rel=1e-2))  # float32 tokens
    assert torch.equal(recorded, plain) and 'partition_codes' not in vars(attn)
    # K-Means partitions have no planes: no margin.
    kmeans = DualFormer(TINY_ARCH, attn_cfg=dict(partition='kmeans')).eval()
    with targets.partition_statistics(kmeans) as stats:
        kmeans(torch.randn(1, 3, 32, 32))
    assert 'margin' not in stats and stats['partitions'] == 8


def test_tie_free_images_draw_seeded_images_until_the_margin_allows(monkeypatch):
    target = targets.build_target(CLS.format('t'), part='backbone')
    shape = (1, 3, 32, 32)
    draws = [torch.randn(*shape, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    margins = []
    for images in draws:
        with torch.no_grad(), targets.partition_statistics(target.backbone) as stats:
            target.reference(images)
        margins.append(stats['margin'])
    # The first draw whose margin reaches TIE_MARGIN, from the given seed on.
    monkeypatch.setattr(onnx_export, 'TIE_MARGIN', sorted(margins)[-2])
    first = next(i for i, m in enumerate(margins) if m >= onnx_export.TIE_MARGIN)
    images, margin = onnx_export.tie_free_images(target, shape, draws=4)
    assert torch.equal(images, draws[first]) and margin == margins[first]
    images, margin = onnx_export.tie_free_images(target, shape, draws=3, seed=1)
    later = [m >= onnx_export.TIE_MARGIN for m in margins[1:]]
    assert torch.equal(images, draws[1 + later.index(True)])
    # None reaches it: the widest of the draws.
    monkeypatch.setattr(onnx_export, 'TIE_MARGIN', 1.0)
    images, margin = onnx_export.tie_free_images(target, shape, draws=4)
    widest = max(range(4), key=margins.__getitem__)
    assert torch.equal(images, draws[widest]) and margin == margins[widest]
    assert onnx_export.CheckResult(shape, 0.0, 1.0, 4, 16, 8, margin).near_tie
    assert 'a near tie' in onnx_export.CheckResult(shape, 0.0, 1.0, 4, 16, 8, margin).describe()


def test_docstring_examples():
    import dualformer_mm.deployment as package
    for module in (package, onnx_export, targets, tensorrt):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# (config, part, export shape, dynamic, check shapes) of the sweep. Sizes at which a seeded
# image without near ties is common for every size (DualFormer-B: 7 to 10 of 16 seeds):
# 1x3x128x160 holds 20 tokens per MHPA head for 8 partitions, 2x3x64x96 fewer than 8 in stage 4.
EVERY_PART = {
    'classifier': (CLS, (1, 3, 128, 128), False, None),
    'segmentor': (SEG, (2, 3, 96, 128), True, [(1, 3, 128, 160), (2, 3, 64, 96)]),
    'detector': (DET, (1, 3, 128, 160), False, None),
    'backbone': (DET, (1, 3, 128, 160), False, None),
}


# One case per size and part, each with its own time limit: DualFormer-B's segmentor case
# took 11 minutes on 2 cores, the whole sweep 37.
@pytest.mark.full
@pytest.mark.timeout(2400)
@pytest.mark.parametrize('part', list(EVERY_PART))
@pytest.mark.parametrize('arch', ARCHS)
def test_every_size_and_part(arch, part, tmp_path):
    config, shape, dynamic, sizes = EVERY_PART[part]
    target = targets.build_target(config.format(arch), part=part)
    _, _, results = _export_and_check(target, tmp_path, shape, dynamic, sizes)
    for result in results:
        assert not result.near_tie, result.describe()
        assert result.max_abs_diff <= ATOL * max(1.0, result.max_abs_ref), \
            f'{arch} {part}: {result.describe()}'
    if part == 'segmentor':
        many, few = results
        assert many.min_tokens > 2 * many.partitions and few.min_tokens < few.partitions
