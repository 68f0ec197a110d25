"""tools/deployment/partition_agreement.py and dualformer_mm.deployment.agreement: PyTorch's two
op backends and ONNX Runtime on images, each runtime with its own partitions.

The tool runs (``slow``: they export) use the demo configs with a DualFormer of one block per
stage and random weights, on a few generated images: a classifier (dynamo exporter) and a
segmentor at two image sizes (TorchScript exporter, one export per size)."""
import doctest
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from dualformer_mm import ops
from dualformer_mm.utils import build_model_from_cfg
from tests.utils import ROOT, TINY_ARCH, load_script

pytest.importorskip('onnx', reason='onnx is not installed (requirements/tests.txt pins it)')
pytest.importorskip('onnxruntime',
                    reason='onnxruntime is not installed (requirements/tests.txt pins it)')
from dualformer_mm.deployment import agreement, targets  # noqa: E402
from dualformer_mm.deployment.onnx_export import DeploymentError  # noqa: E402

tool = load_script('tools/deployment/partition_agreement.py')

DEMO = {'classifier': osp.join(ROOT, 'configs', 'demo', 'cls_dualformer_t_demo.py'),
        'segmentor': osp.join(ROOT, 'configs', 'demo', 'seg_dualformer_t_demo.py')}
# Outputs are O(1): with the same partitions the runtimes differ by float32 rounding.
ATOL = 1e-4
# The fused kernels are compared where they are built (make setup builds them).
RUNTIMES = agreement.RUNTIMES if ops.extension_available('cpu') else \
    ('reference', 'onnxruntime')


def _tiny(tmp_path, part: str) -> str:
    """The demo config of ``part`` with one block per stage, its heads' inputs to match."""
    channels = TINY_ARCH['channels']
    heads = dict(classifier=dict(head=dict(in_channels=channels[-1])),
                 segmentor=dict(decode_head=dict(in_channels=channels),
                                auxiliary_head=dict(in_channels=channels[2])))[part]
    model = dict(backbone=dict(arch=dict(TINY_ARCH, _delete_=True)), **heads)
    path = tmp_path / f'tiny_{part}.py'
    path.write_text(f'_base_ = [{DEMO[part]!r}]\nmodel = {model!r}\n')
    return str(path)


def _checkpoint(tmp_path, config: str) -> str:
    torch.manual_seed(0)
    model = build_model_from_cfg(config).eval()
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():  # running statistics in use
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    path = str(tmp_path / 'weights.pth')
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), path)
    return path


def _images(folder, sizes, suffix='.png'):
    """Seeded images of ``sizes`` (H, W), in nested folders as ImageNet-style trees are."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        sub = folder / f'class_{i % 2}'
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f'image_{i}{suffix}'
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return sorted(paths)


def _check_report(report, part, paths, shapes):
    pairs = {f'{a}/{b}' for i, a in enumerate(RUNTIMES) for b in RUNTIMES[i + 1:]}
    summary = report['summary']
    assert summary['part'] == part and summary['images'] == len(paths)
    assert set(summary['pairs']) == pairs
    assert [r['path'] for r in report['images']] == paths
    assert [tuple(r['shape']) for r in report['images']] == shapes
    for image in report['images']:
        assert 0 < image['margin'] < 1
        labels = image['shape'][0] * (1 if part == 'classifier' else
                                      image['shape'][2] * image['shape'][3])
        for pair, figures in image['pairs'].items():
            assert 0 <= figures['labels'] <= 1 and 0 <= figures['codes'] <= 1
            assert figures['labels_total'] == labels
            assert figures['labels_differing'] == round((1 - figures['labels']) * labels)
            if figures['codes'] == 0:  # the same partitions: rounding only, the same labels
                assert figures['max_abs_diff'] <= ATOL and figures['labels'] == 1, (pair, image)
    for pair, figures in summary['pairs'].items():
        per_image = [r['pairs'][pair] for r in report['images']]
        assert figures['max_abs_diff'] == max(p['max_abs_diff'] for p in per_image)
        assert figures['labels_agree'] == sum(p['labels'] == 1 for p in per_image)
        assert figures['labels_differing'] == sum(p['labels_differing'] for p in per_image)
        assert figures['images_with_code_disagreement'] == sum(p['codes'] > 0 for p in per_image)
    assert summary['smallest_margin'] == min(r['margin'] for r in report['images'])
    assert report['environment']['packages']['onnxruntime']


@pytest.mark.slow
def test_classifier_agreement_report(tmp_path, capsys):
    config = _tiny(tmp_path, 'classifier')
    checkpoint = _checkpoint(tmp_path, config)
    paths = _images(tmp_path / 'images', [(64, 64)] * 3)
    out = str(tmp_path / 'report.json')
    assert tool.main([config, checkpoint, '--images', str(tmp_path / 'images'), '--out', out,
                      '--work-dir', str(tmp_path / 'work'), '--runtimes', *RUNTIMES]) == 0
    with open(out) as f:
        report = json.load(f)
    _check_report(report, 'classifier', paths, [(1, 3, 64, 64)] * 3)
    assert report['checkpoint'] == checkpoint and len(report['onnx_files']) == 1
    assert report['sources'] == [str(tmp_path / 'images')]
    printed = capsys.readouterr().out
    assert '| runtimes | top-1 agrees |' in printed and f'loaded {checkpoint}' in printed
    assert '3 images, hyperplane margin >=' in printed


@pytest.mark.slow
def test_segmentor_agreement_report_exports_once_per_size(tmp_path, capsys):
    config = _tiny(tmp_path, 'segmentor')
    checkpoint = _checkpoint(tmp_path, config)
    paths = _images(tmp_path / 'images', [(96, 128), (64, 64), (96, 128)], '.jpg')
    out = str(tmp_path / 'report.json')
    assert tool.main([config, checkpoint, '--images', str(tmp_path / 'images'), '--out', out,
                      '--work-dir', str(tmp_path / 'work'), '--exporter', 'torchscript',
                      '--limit', '3', '--runtimes', *RUNTIMES]) == 0
    with open(out) as f:
        report = json.load(f)
    # The demo's test pipeline keeps the image size; mmseg's whole inference at that size.
    shapes = [(1, 3, 64, 64) if 'image_1' in p else (1, 3, 96, 128) for p in paths]
    _check_report(report, 'segmentor', paths, shapes)
    assert sorted(osp.basename(p) for p in report['onnx_files']) == [
        'segmentor_1x3x64x64_with_codes.onnx', 'segmentor_1x3x96x128_with_codes.onnx']
    assert '| every pixel label equal; pixels with another label |' in capsys.readouterr().out


def test_inputs_are_the_configs_test_pipeline(tmp_path):
    config = _tiny(tmp_path, 'classifier')
    target = targets.build_target(config)
    (path, ) = _images(tmp_path / 'images', [(64, 48)])
    ((name, images), ) = agreement.preprocess(target, config, [path])
    rgb = torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1).float()
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    assert name == path
    torch.testing.assert_close(images, ((rgb - mean) / std)[None], rtol=0, atol=1e-5)
    # A segmentor's pipeline loads annotations, which these images have none of.
    seg = _tiny(tmp_path, 'segmentor')
    ((_, images), ) = agreement.preprocess(targets.build_target(seg), seg, [path])
    assert images.shape == (1, 3, 64, 48)
    # --resize: one size for every image, first in the pipeline.
    ((_, images), ) = agreement.preprocess(targets.build_target(seg), seg, [path],
                                           resize=(96, 128))
    assert images.shape == (1, 3, 96, 128)


def test_bad_requests_name_what_is_accepted(tmp_path, capsys):
    config = _tiny(tmp_path, 'classifier')
    assert tool.main([config, 'x.pth', '--images', str(tmp_path / 'none')]) == 2
    assert 'neither a folder nor an image file' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no image')
    assert tool.main([config, 'x.pth', '--images', str(tmp_path / 'empty')]) == 2
    assert 'no image files' in capsys.readouterr().err
    # Folders and files, in order; a file that does not load is named.
    (tmp_path / 'empty' / 'broken.png').write_text('not a PNG')
    paths = _images(tmp_path / 'images', [(64, 64)] * 2)
    assert agreement.find_images([paths[1], str(tmp_path / 'images')]) == [paths[1]] + paths
    target = targets.build_target(config)
    with pytest.raises(DeploymentError, match='broken.png: failed to load image'):
        list(agreement.preprocess(target, config, [str(tmp_path / 'empty' / 'broken.png')]))
    backbone = targets.build_target(config, part='backbone')
    with pytest.raises(DeploymentError, match='takes a classifier or segmentor'):
        agreement.Comparison(backbone, str(tmp_path))
    with pytest.raises(DeploymentError, match='at least two of'):
        agreement.Comparison(targets.build_target(config), str(tmp_path), ['reference'])
    with pytest.raises(SystemExit):
        tool.parse_args([config, 'x.pth', '--images', '.', '--runtimes', 'tensorrt'])


def test_missing_kernels_are_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(agreement.ops, 'extension_available', lambda device='cpu': False)
    target = targets.build_target(_tiny(tmp_path, 'classifier'))
    with pytest.raises(DeploymentError, match="'ext' op backend .* is not built"):
        agreement.Comparison(target, str(tmp_path))
    agreement.Comparison(target, str(tmp_path), ['reference', 'onnxruntime'])


def test_docstring_examples():
    result = doctest.testmod(agreement)
    assert result.attempted > 0 and result.failed == 0
