"""DualFormer in timm's registry (dualformer_mm/integrations): the model contract of timm, the
same weights as the mmpretrain classifier, and timm's feature wrappers.

Each test builds what it needs: full-size models where the size matters (registration,
parameter counts), DualFormer-T on 32-64 px images for the forward passes.
"""
import os
import os.path as osp
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from mmengine.config import Config

from dualformer_mm import DualFormer, compat
from dualformer_mm.integrations import register_timm_models
from dualformer_mm.utils import build_model_from_cfg
from tests.utils import ARCHS

timm = pytest.importorskip('timm', reason='timm is not installed (requirements/tests.txt pins it)')
from dualformer_mm.integrations import timm_dualformer  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_CONFIG = osp.join(ROOT, 'configs', 'mmpretrain', 'dualformer_{}_in1k.py')
NAMES = [f'dualformer_{arch}' for arch in ARCHS]


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONWARNINGS='ignore'))


def _randomise_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics away from 0/1, so a test that compares outputs sees them used."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def _mmpretrain_classifier(arch: str = 't') -> torch.nn.Module:
    return build_model_from_cfg(CLS_CONFIG.format(arch)).eval()


def test_import_registers_when_timm_is_imported_and_never_imports_it():
    code = ('import sys, dualformer_mm; assert "timm" not in sys.modules, "imported timm";'
            'import timm; print(sorted(timm.list_models("dualformer_*")));'
            'print(timm.list_models("dualformer_*", pretrained=True))')
    result = _fresh(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split('\n')[:2] == [str(sorted(NAMES)), '[]']
    # timm first, then the package: registered at once.
    result = _fresh('import timm, dualformer_mm; print(len(timm.list_models("dualformer_*")))')
    assert result.returncode == 0 and result.stdout.strip() == '4', result.stderr[-2000:]


def test_without_timm_nothing_changes_and_nothing_warns():
    # A finder that answers for timm as an environment without it does.
    code = '\n'.join([
        'import importlib.abc, sys, warnings',
        'class NoTimm(importlib.abc.MetaPathFinder):',
        '    def find_spec(self, name, path, target=None):',
        '        if name == "timm" or name.startswith("timm."):',
        '            raise ModuleNotFoundError(f"No module named {name!r}", name=name)',
        'sys.meta_path.insert(0, NoTimm())',
        'with warnings.catch_warnings(record=True) as caught:',
        '    warnings.simplefilter("always")',
        '    import dualformer_mm',
        '    from dualformer_mm.integrations import register_timm_models',
        '    assert register_timm_models() is False',
        '    try:',
        '        import timm',
        '    except ModuleNotFoundError as err:',
        '        print("no timm:", err.name)',
        'print("timm warnings:", [str(w.message) for w in caught if "timm" in str(w.message)])',
        'print(type(dualformer_mm.DualFormer(arch="t")).__name__)',
    ])
    result = _fresh(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split('\n')[:3] == ['no timm: timm', 'timm warnings: []', 'DualFormer']


def test_an_old_or_broken_timm_is_reported_not_raised(monkeypatch):
    import dualformer_mm.integrations as integrations
    monkeypatch.setitem(sys.modules, 'timm', types.SimpleNamespace(__version__='0.6.13'))
    with pytest.warns(RuntimeWarning, match=r'timm 0.6.13 is older than 0.9'):
        assert register_timm_models() is False
    monkeypatch.delitem(sys.modules, 'timm')
    real_import = integrations.importlib.import_module

    def broken(name, *args):
        if name == 'timm':
            raise OSError('libtorchvision.so: cannot open shared object file')
        return real_import(name, *args)

    monkeypatch.setattr(integrations.importlib, 'import_module', broken)
    with pytest.warns(RuntimeWarning, match=r'timm is installed but cannot be imported '
                      r'\(OSError: libtorchvision.so'):
        assert register_timm_models() is False


@pytest.mark.parametrize('arch', ARCHS)
def test_create_model_is_the_mmpretrain_classifier(arch):
    model = timm.create_model(f'dualformer_{arch}').eval()
    reference = _mmpretrain_classifier(arch)
    # The same module: the same keys and shapes, so checkpoints load either way unchanged.
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert isinstance(model.backbone, DualFormer) and model.backbone.out_indices == (3, )
    assert model.num_classes == 1000 and model.num_features == model.backbone.channels[-1]
    assert model.pretrained_cfg['architecture'] == f'dualformer_{arch}'
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_create_model_initialises_as_the_recipe():
    model = timm.create_model('dualformer_t', num_classes=10)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    # TruncNormal(std=0.02), zero bias (DualFormer's init_cfg and the classifier head's),
    # not torch's default uniform init (std 1/sqrt(3 fan_in): 0.03-0.07 here, non-zero biases).
    big = [m.weight.detach() for m in layers if m.weight.numel() >= 10000]
    assert big and all(abs(float(w.std()) - 0.02) < 0.002 for w in big)
    assert all(m.bias is None or not m.bias.any() for m in layers)
    cfg = Config.fromfile(CLS_CONFIG.format('t'))
    assert timm_dualformer.HEAD_INIT_CFG == cfg.model.head.init_cfg


@pytest.mark.parametrize('feature_cls', ['getter', 'hook'])
def test_features_only_is_the_detection_backbone(feature_cls):
    model = timm.create_model('dualformer_t', features_only=True, feature_cls=feature_cls).eval()
    assert model.feature_info.channels() == [64, 128, 256, 320]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    # The maps mmdet and mmseg take from the backbone built as their configs build it.
    backbone = _randomise_statistics(DualFormer(arch='t', out_indices=(0, 1, 2, 3))).eval()
    prefix = 'model.backbone.' if feature_cls == 'getter' else 'body.backbone.'
    state = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    assert set(state) == set(backbone.state_dict())
    model.load_state_dict({prefix + k: v for k, v in backbone.state_dict().items()})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got, want = model(x), backbone(x)
    assert len(got) == 4
    for g, w, c, r in zip(got, want, [64, 128, 256, 320], [4, 8, 16, 32]):
        assert g.shape == (2, c, 64 // r, 96 // r)
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize('out_indices, stages', [((1, 3), [1, 3]), ((-1, ), [3]), (2, [2, 3]),
                                                 ((0, 1), [0, 1])])
def test_features_only_out_indices(out_indices, stages):
    model = timm.create_model('dualformer_t', features_only=True, out_indices=out_indices)
    channels = [64, 128, 256, 320]
    assert model.feature_info.channels() == [channels[i] for i in stages]
    assert model.feature_info.reduction() == [4 * 2**i for i in stages]
    with torch.no_grad():
        feats = model.eval()(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [channels[i] for i in stages]
    # Stages after the last asked for are pruned with the classifier.
    backbone = model.model.backbone
    assert len(backbone.stages) == max(stages) + 1 and backbone.out_indices == tuple(stages)
    assert isinstance(model.model.head.fc, torch.nn.Identity)


def test_bad_feature_requests_name_the_accepted_values():
    with pytest.raises(ValueError, match=r"feature_cls must be one of \('getter', 'hook'\)"):
        timm.create_model('dualformer_t', features_only=True, feature_cls='list')
    with pytest.raises(ValueError, match=r'out_indices must be in -4..3, got \[4\]'):
        timm.create_model('dualformer_t', features_only=True, out_indices=(4, ))


def test_forward_intermediates():
    model = _randomise_statistics(timm.create_model('dualformer_t', num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, raw = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, stop_early=True,
                                               intermediates_only=True)
        features = model.forward_features(x)
    assert [tuple(t.shape) for t in raw] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4),
                                             (2, 320, 2, 2)]
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    # Only the last stage has an output norm in the classifier; norm=True applies it.
    torch.testing.assert_close(normed[3], features, rtol=0, atol=0)
    assert not torch.allclose(raw[3], features)
    for i in range(3):
        torch.testing.assert_close(normed[i], raw[i], rtol=0, atol=0)
    torch.testing.assert_close(last_two[0], raw[2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(x, output_fmt='NHWC')


def test_classifier_interface():
    model = timm.create_model('dualformer_t', num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert logits.shape == (2, 7) and pooled.shape == (2, 320)
    assert model.get_classifier() is model.head.fc
    torch.testing.assert_close(logits, model.head.fc(pooled), rtol=0, atol=0)
    model.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)
    model.reset_classifier(5, global_pool='')
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == \
            (2, 320, 2, 2)
    assert timm.create_model('dualformer_t', global_pool='max').head.global_pool.pool_type \
        == 'max'


def test_pretrained_true_without_weights_is_a_clear_error():
    with pytest.raises(RuntimeError, match='No pretrained DualFormer weights are published yet'):
        timm.create_model('dualformer_s', pretrained=True)


def test_mmpretrain_checkpoint_loads_into_timm_and_back(tmp_path):
    classifier = _randomise_statistics(_mmpretrain_classifier('t'))
    path = str(tmp_path / 'epoch_300.pth')
    # As mmengine's CheckpointHook writes it (meta, state_dict, ...), DDP prefix included.
    torch.save(dict(meta=dict(epoch=300),
                    state_dict={f'module.{k}': v for k, v in classifier.state_dict().items()}),
               path)
    x = torch.randn(2, 3, 64, 64)
    model = timm.create_model('dualformer_t', pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    with torch.no_grad():
        want = classifier(x, mode='tensor')
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    # ... and a timm model's weights into the mmpretrain classifier.
    from mmengine.runner import load_checkpoint
    trained = _randomise_statistics(timm.create_model('dualformer_t')).eval()
    back = str(tmp_path / 'from_timm.pth')
    torch.save(timm_dualformer.to_mmpretrain(trained), back)
    fresh = _mmpretrain_classifier('t')
    load_checkpoint(fresh, back, map_location='cpu', strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, mode='tensor'), trained(x), rtol=0, atol=0)


def test_classifier_checkpoint_starts_a_features_model(tmp_path):
    # As mmdet/mmseg start from it: the backbone's weights, fresh output norms 0-2.
    classifier = _randomise_statistics(_mmpretrain_classifier('t'))
    path = str(tmp_path / 'cls.pth')
    torch.save(dict(state_dict=classifier.state_dict()), path)
    model = timm.create_model('dualformer_t', features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[3], classifier.backbone(x)[0], rtol=0, atol=0)
    norm0 = model.model.backbone.norm0
    assert torch.equal(norm0.weight, torch.ones(64)) and not norm0.running_mean.any()


def test_resolve_data_config_matches_the_mmpretrain_evaluation(tmp_path):
    from mmcv.transforms import Compose
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS, TRANSFORMS
    from mmpretrain.utils import register_all_modules
    from PIL import Image

    cfg = Config.fromfile(CLS_CONFIG.format('t'))
    model = timm.create_model('dualformer_t')
    data_cfg = timm.data.resolve_data_config({}, model=model)
    mean = [m / 255 for m in cfg.data_preprocessor.mean]
    std = [s / 255 for s in cfg.data_preprocessor.std]
    assert data_cfg['input_size'] == (3, 224, 224) and data_cfg['interpolation'] == 'bicubic'
    np.testing.assert_allclose(data_cfg['mean'], mean)
    np.testing.assert_allclose(data_cfg['std'], std)
    # One image through mmpretrain's test pipeline and data preprocessor and through timm's
    # eval transform: the same tensor.
    rng = np.random.default_rng(0)
    path = str(tmp_path / 'img.png')
    Image.fromarray(rng.integers(0, 256, (320, 400, 3), dtype=np.uint8)).save(path)
    # In mmpretrain's scope, whichever scope an earlier test of this process left as default.
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([TRANSFORMS.build(t) for t in cfg.test_dataloader.dataset.pipeline])
        preprocessor = MODELS.build(dict(type='ClsDataPreprocessor', **cfg.data_preprocessor))
    packed = pipeline(dict(img_path=path))
    want = preprocessor(dict(inputs=[packed['inputs']]), False)['inputs'][0]
    transform = timm.data.create_transform(**data_cfg)
    got = transform(Image.open(path).convert('RGB'))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_training_step_updates_every_parameter():
    model = timm.create_model('dualformer_t', num_classes=4, drop_path_rate=0.1).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged, unchanged
    # Gradient checkpointing reaches every block and computes the same gradients.
    model.eval()  # fixed statistics and no drop path, so both runs see the same function
    grads = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing(True)
    assert all(m.with_cp for m in model.modules() if hasattr(m, 'with_cp'))
    x.requires_grad_()
    grads_cp = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for g, g_cp in zip(grads, grads_cp):
        torch.testing.assert_close(g, g_cp)


@pytest.mark.skipif(not compat.COMPILE_SUPPORTED,
                    reason=f'torch.compile does not run on Python {sys.version_info[:2]} with '
                    f'torch {torch.__version__}')
def test_torch_compile_matches_eager():
    model = timm.create_model('dualformer_t', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_hugging_face_timm_backbone():
    transformers = pytest.importorskip(
        'transformers', reason='Hugging Face transformers is not installed (optional; not in '
        'the pinned test stack)')
    config = transformers.TimmBackboneConfig(backbone='dualformer_t', out_indices=(0, 1, 2, 3))
    hf = transformers.TimmBackbone(config).eval()
    assert list(hf.channels) == [64, 128, 256, 320]
    backbone = DualFormer(arch='t', out_indices=(0, 1, 2, 3)).eval()
    prefix = '_backbone.model.backbone.'
    backbone.load_state_dict({k[len(prefix):]: v for k, v in hf.state_dict().items()
                              if k.startswith(prefix)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = hf(x).feature_maps
        want = backbone(x)
    for got, ref in zip(maps, want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match='No pretrained DualFormer weights'):
        transformers.TimmBackbone.from_pretrained('dualformer_t')


def test_docstring_examples():
    import doctest

    import dualformer_mm.integrations as integrations
    for module in (integrations, timm_dualformer):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
