"""Fine-tuning conventions: layer-wise learning-rate decay and weight-decay exclusions, as
mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` (through
``DualFormer.get_layer_depth``), this package's ``LayerDecayOptimWrapperConstructor`` (in the
mmpretrain, mmdet and mmseg configs) and timm's ``create_optimizer_v2`` (through
``group_matcher`` and ``no_weight_decay``) build them on DualFormer.

The expected depths are written out here for a small arch with two blocks in some stages, so
that the first and the last block of a stage, and a stage's downsampling, are told apart.
"""
import os.path as osp

import pytest
import torch.nn as nn
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from dualformer_mm import DualFormer
from dualformer_mm.utils import build_model_from_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLS_CONFIG = osp.join(ROOT, 'configs', 'mmpretrain', 'dualformer_t_in1k.py')
# Two blocks in stages 1 and 3: their first and last blocks have different depths.
ARCH = dict(depths=[1, 2, 1, 2], channels=[16, 32, 64, 96], num_heads=[1, 2, 2, 3],
            mlp_ratios=[2, 2, 2, 2])
NUM_LAYERS = 1 + 6 + 1  # the stem, six blocks, and the output norms with what follows
# Parameter name (inside the backbone) -> layer depth.
EXPECTED_DEPTHS = {
    'stem.0.conv.weight': 0,
    'stem.1.norm.bias': 0,
    'stages.0.blocks.0.norm1.weight': 1,
    'stages.0.blocks.0.attn.value.weight': 1,
    # A stage's downsampling runs right before its first block, and takes that block's depth.
    'stages.1.downsample.conv.weight': 2,
    'stages.1.downsample.norm.weight': 2,
    'stages.1.blocks.0.conv.layers.0.conv.weight': 2,
    'stages.1.blocks.1.ffn.fc2.bias': 3,
    'stages.2.downsample.conv.weight': 4,
    'stages.2.blocks.0.attn.importance.0.weight': 4,
    'stages.3.downsample.norm.bias': 5,
    'stages.3.blocks.0.proj.weight': 5,
    'stages.3.blocks.1.ffn.fc1.weight': 6,
    # The output norms take the depth of the neck and head, as Swin's do.
    'norm3.weight': 7,
    'norm1.bias': 7,
}


def is_norm_or_bias(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` of ``model`` belongs to a norm layer or is a bias."""
    module = model.get_submodule(name.rpartition('.')[0])
    return name.endswith('.bias') or isinstance(
        module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm))


def test_get_layer_depth_of_the_backbone():
    model = DualFormer(arch=ARCH, out_indices=(1, 3))
    names = [name for name, _ in model.named_parameters()]
    assert set(EXPECTED_DEPTHS) <= set(names)
    for name, depth in EXPECTED_DEPTHS.items():
        assert model.get_layer_depth(name) == (depth, NUM_LAYERS), name
        assert model.get_layer_depth('backbone.' + name, 'backbone.') == (depth, NUM_LAYERS)
    # Outside the backbone (a neck, a head): the top depth.
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (NUM_LAYERS - 1, NUM_LAYERS)
    # The depth never decreases along the network (named_parameters is in forward order), and
    # every depth from the stem to the top is used.
    depths = [model.get_layer_depth(name)[0] for name in names]
    assert depths == sorted(depths)
    assert sorted(set(depths)) == list(range(NUM_LAYERS))


def test_get_layer_depth_counts_the_blocks_of_every_size():
    for arch in ('t', 's'):
        model = DualFormer(arch=arch)
        blocks = sum(model.arch_settings['depths'])
        last = f'stages.3.blocks.{model.arch_settings["depths"][3] - 1}.proj.weight'
        assert model.get_layer_depth('stem.0.conv.weight') == (0, blocks + 2)
        assert model.get_layer_depth(last) == (blocks, blocks + 2)


def mmpretrain_optim_wrapper(optim_wrapper: dict):
    """The classifier of configs/mmpretrain/dualformer_t_in1k.py with ``optim_wrapper``
    merged into that config's, built as mmengine's Runner builds it."""
    pytest.importorskip('mmpretrain')
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile(CLS_CONFIG)
    cfg.merge_from_dict(dict(optim_wrapper=optim_wrapper))
    model = build_model_from_cfg(cfg)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance('dualformer-test-finetune', scope_name=cfg.default_scope)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, wrapper


def test_mmpretrain_layer_decay_constructor_groups():
    # What docs give for fine-tuning with layer decay: the recipe's optimizer and paramwise
    # settings, with mmpretrain's constructor and a decay rate.
    model, wrapper = mmpretrain_optim_wrapper(dict(
        constructor='LearningRateDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.8)))
    base_lr = wrapper.optimizer.defaults['lr']
    groups = {g['param_name']: g for g in wrapper.optimizer.param_groups}
    params = dict(model.named_parameters())
    assert set(groups) == set(params)
    # DualFormer-T: 2 + 2 + 4 + 2 blocks, so 12 depths: the stem 0, the blocks 1-10, the top 11.
    expected = {
        'backbone.stem.0.conv.weight': 0,
        'backbone.stages.0.blocks.0.attn.value.weight': 1,
        'backbone.stages.1.downsample.conv.weight': 3,
        'backbone.stages.1.blocks.0.proj.weight': 3,
        'backbone.stages.3.blocks.1.ffn.fc2.weight': 10,
        'backbone.norm3.weight': 11,
        'head.fc.weight': 11,
        'head.fc.bias': 11,
    }
    for name, depth in expected.items():
        assert groups[name]['layer_id'] == depth, name
        assert groups[name]['lr'] == pytest.approx(base_lr * 0.8**(11 - depth)), name
    assert groups['head.fc.weight']['lr'] == pytest.approx(base_lr)
    # The recipe's paramwise settings: no weight decay on norms and biases (every 1-D
    # parameter of DualFormer), the optimizer's 0.05 on every conv and linear weight.
    for name, param in params.items():
        no_decay = is_norm_or_bias(model, name)
        assert no_decay == (param.ndim == 1), name
        assert groups[name]['weight_decay'] == (0. if no_decay else 0.05), name
    # No positional or relative-position parameter exists: the LSH planes are buffers.
    assert not any('planes' in name for name in params)
    assert any(name.endswith('.planes') for name, _ in model.named_buffers())


def test_mmpretrain_constructor_needs_only_norm_and_bias_mults():
    # Without flat_decay_mult, norm_decay_mult and bias_decay_mult alone exclude the same
    # parameters: the 1-D parameters of DualFormer are its norms' and its biases.
    model, wrapper = mmpretrain_optim_wrapper(dict(
        constructor='LearningRateDecayOptimWrapperConstructor',
        paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.8, norm_decay_mult=0.,
                           bias_decay_mult=0.)))
    decay = {g['param_name']: g['weight_decay'] for g in wrapper.optimizer.param_groups}
    for name, param in model.named_parameters():
        assert decay[name] == (0. if param.ndim == 1 else 0.05), name


def timm_model(**kwargs) -> nn.Module:
    timm = pytest.importorskip('timm')
    import dualformer_mm.integrations  # noqa: F401  (registers the models on timm's import)
    return timm.create_model('dualformer_t', num_classes=10, **kwargs)


def timm_groups(model: nn.Module, **kwargs) -> dict:
    """Parameter name -> (lr_scale, weight_decay) of timm's optimizer for ``model``."""
    from timm.optim import create_optimizer_v2
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, **kwargs)
    by_id = {id(p): g for g in optimizer.param_groups for p in g['params']}
    return {name: (by_id[id(p)].get('lr_scale', 1.), by_id[id(p)]['weight_decay'])
            for name, p in model.named_parameters()}


def test_timm_layer_decay_groups():
    model = timm_model()
    groups = timm_groups(model, layer_decay=0.8)
    expected = {
        'backbone.stem.0.conv.weight': 0,
        'backbone.stem.1.norm.weight': 0,
        'backbone.stages.0.blocks.0.attn.value.weight': 1,
        'backbone.stages.1.downsample.conv.weight': 3,
        'backbone.stages.1.blocks.0.proj.weight': 3,
        'backbone.stages.3.blocks.1.ffn.fc2.weight': 10,
        'backbone.norm3.weight': 11,
        'head.fc.weight': 11,
    }
    for name, depth in expected.items():
        assert groups[name][0] == pytest.approx(0.8**(11 - depth)), name
    # timm's groups are the depths mmpretrain's constructor gets from get_layer_depth.
    for name, (scale, _) in groups.items():
        depth, num_layers = model.backbone.get_layer_depth(name, 'backbone.')
        assert scale == pytest.approx(0.8**(num_layers - 1 - depth)), name
    for name, param in model.named_parameters():
        assert groups[name][1] == (0. if is_norm_or_bias(model, name) else 0.05), name


def test_timm_no_weight_decay_names_the_norms_and_biases():
    model = timm_model()
    no_decay = model.no_weight_decay()
    assert no_decay == {name for name, _ in model.named_parameters()
                        if is_norm_or_bias(model, name)}
    # They stay excluded when timm's own rule for 1-D parameters is switched off.
    for kwargs in (dict(layer_decay=0.8), dict()):
        groups = timm_groups(model, filter_bias_and_bn=False, **kwargs)
        for name, (_, decay) in groups.items():
            assert decay == (0. if name in no_decay else 0.05), (kwargs, name)


def test_timm_group_matcher():
    from timm.models import group_parameters
    model = timm_model()
    fine = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    # The stem, ten blocks, then the output norm with the head (matched by nothing: last).
    assert sorted(set(fine.values())) == list(range(12))
    assert fine['backbone.stem.0.conv.weight'] == 0
    assert fine['backbone.norm3.weight'] == fine['head.fc.weight'] == 11
    assert fine['backbone.stages.1.downsample.conv.weight'] == \
        fine['backbone.stages.1.blocks.0.proj.weight'] == 3
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert sorted(set(coarse.values())) == list(range(6))  # stem, four stages, head
    assert coarse['backbone.stages.1.downsample.conv.weight'] == \
        coarse['backbone.stages.1.blocks.1.proj.weight'] == 2


# LayerDecayOptimWrapperConstructor (dualformer_mm/engine/optim.py): the same layer decay in
# the configs of all three toolboxes, with the backbone giving the depths.
DET_CONFIG = osp.join(ROOT, 'configs', 'mmdet', 'mask_rcnn_dualformer_t_1x.py')
SEG_CONFIG = osp.join(ROOT, 'configs', 'mmseg', 'upernet_dualformer_t_ade20k.py')
LAYER_DECAY = dict(constructor='LayerDecayOptimWrapperConstructor',
                   optimizer=dict(type='AdamW', weight_decay=0.05),
                   paramwise_cfg=dict(layer_decay_rate=0.9))


def toolbox_optim_wrapper(config: str, optim_wrapper: dict):
    """The model of ``config`` and the optimizer wrapper of its ``optim_wrapper`` merged with
    ``optim_wrapper``, both built in the config's toolbox scope as mmengine's Runner builds
    them; also the constructor class that the scope's registry resolves."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope
    cfg = Config.fromfile(config)
    pytest.importorskip(cfg.default_scope)
    cfg.merge_from_dict(dict(optim_wrapper=optim_wrapper))
    model = build_model_from_cfg(cfg)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(f'dualformer-test-decay-{cfg.default_scope}',
                                      scope_name=cfg.default_scope)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        with OPTIM_WRAPPER_CONSTRUCTORS.switch_scope_and_registry(None) as registry:
            assert registry.scope == cfg.default_scope
            constructor = registry.get(cfg.optim_wrapper.constructor)
    return model, wrapper, constructor


def groups_by_name(wrapper) -> dict:
    """Parameter name -> its group, checking that each group's names are its parameters'."""
    groups = {}
    for group in wrapper.optimizer.param_groups:
        assert len(group['param_names']) == len(group['params'])
        for name in group['param_names']:
            assert name not in groups, f'{name} is in two groups'
            groups[name] = group
    return groups


@pytest.mark.parametrize('config, outside_backbone', [
    (DET_CONFIG, {'neck', 'rpn_head', 'roi_head'}),
    (SEG_CONFIG, {'decode_head', 'auxiliary_head'}),
], ids=['mmdet', 'mmseg'])
def test_layer_decay_constructor_in_detection_and_segmentation(config, outside_backbone):
    from dualformer_mm.engine import LayerDecayOptimWrapperConstructor
    model, wrapper, constructor = toolbox_optim_wrapper(config, LAYER_DECAY)
    # The plain name, registered in mmengine's root registry, resolves in the toolbox's scope.
    assert constructor is LayerDecayOptimWrapperConstructor
    base_lr = wrapper.optimizer.defaults['lr']
    assert base_lr == Config.fromfile(config).optim_wrapper.optimizer.lr
    groups = groups_by_name(wrapper)
    params = dict(model.named_parameters())
    # Every trainable parameter is in exactly one group, as the named parameter.
    assert set(groups) == {name for name, p in params.items() if p.requires_grad}
    for name, group in groups.items():
        assert any(p is params[name] for p in group['params']), name
    # DualFormer-T: 2 + 2 + 4 + 2 blocks, so 12 depths.
    expected = {
        'backbone.stem.0.conv.weight': 0,  # the first layer
        'backbone.stages.0.blocks.0.proj.weight': 1,  # the first block of the first stage
        'backbone.stages.1.downsample.conv.weight': 3,
        'backbone.stages.1.blocks.0.proj.weight': 3,
        'backbone.stages.3.blocks.1.ffn.fc2.weight': 10,  # the last block
        'backbone.norm3.weight': 11,
    }
    for name, depth in expected.items():
        assert groups[name]['layer_id'] == depth, name
        assert groups[name]['lr'] == pytest.approx(base_lr * 0.9**(11 - depth)), name
    assert groups['backbone.stem.0.conv.weight']['lr'] == pytest.approx(base_lr * 0.9**11)
    # Every parameter: the backbone's depth; the neck and heads the top depth, at base lr.
    outside = [name for name in groups if not name.startswith('backbone.')]
    assert {name.split('.')[0] for name in outside} == outside_backbone
    for name, group in groups.items():
        depth = model.backbone.get_layer_depth(name, 'backbone.')[0]
        if not name.startswith('backbone.'):
            assert depth == 11 and group['lr'] == pytest.approx(base_lr), name
        assert group['layer_id'] == depth, name
        assert group['lr'] == pytest.approx(base_lr * 0.9**(11 - depth)), name
        # No weight decay on 1-D parameters (norms and biases), the optimizer's elsewhere.
        assert group['weight_decay'] == (0. if params[name].ndim == 1 else 0.05), name
    assert any(name.endswith('.bias') and params[name].ndim == 1 for name in outside)


def test_layer_decay_constructor_matches_mmpretrain_on_the_classifier():
    # The classifier has get_layer_depth itself; with the recipe's paramwise settings
    # (norm, bias and flat decay mults 0) both constructors give every parameter the same lr
    # and weight decay.
    paramwise = dict(layer_decay_rate=0.8)
    model, ours, _ = toolbox_optim_wrapper(
        CLS_CONFIG, dict(constructor='LayerDecayOptimWrapperConstructor',
                         paramwise_cfg=paramwise))
    _, theirs = mmpretrain_optim_wrapper(dict(
        constructor='LearningRateDecayOptimWrapperConstructor', paramwise_cfg=paramwise))
    reference = {g['param_name']: g for g in theirs.optimizer.param_groups}
    groups = groups_by_name(ours)
    assert set(groups) == set(reference) == {name for name, _ in model.named_parameters()}
    for name, group in groups.items():
        assert group['layer_id'] == reference[name]['layer_id'], name
        assert group['lr'] == pytest.approx(reference[name]['lr']), name
        assert group['weight_decay'] == reference[name]['weight_decay'], name
    # One group per depth and weight decay, not one per parameter.
    assert len(ours.optimizer.param_groups) == 2 * 12


class TinyDetector(nn.Module):
    """A backbone, a neck and a head, as the toolboxes' models hold them."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(96, 8, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 3))


def build_layer_decay(model: nn.Module, **paramwise_cfg):
    from dualformer_mm.engine import LayerDecayOptimWrapperConstructor
    constructor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)), paramwise_cfg)
    return constructor(model)


def test_layer_decay_weight_decay_switches_and_frozen_stages():
    model = TinyDetector(DualFormer(arch=ARCH, out_indices=(3, ), frozen_stages=1))
    params = dict(model.named_parameters())
    frozen = {name for name, p in params.items() if not p.requires_grad}
    assert 'backbone.stem.0.conv.weight' in frozen and 'backbone.stages.0.blocks.0.proj.weight' \
        in frozen and 'backbone.stages.1.blocks.0.proj.weight' not in frozen

    groups = groups_by_name(build_layer_decay(model, layer_decay_rate=0.5))
    assert set(groups) == set(params) - frozen  # frozen parameters get no group
    assert groups['backbone.stages.1.blocks.0.proj.weight']['lr'] == pytest.approx(
        1e-3 * 0.5**(NUM_LAYERS - 1 - 2))
    for name, group in groups.items():
        assert group['weight_decay'] == (0. if params[name].ndim == 1 else 0.05), name

    # flat_decay_mult=1: every parameter decayed.
    groups = groups_by_name(build_layer_decay(model, layer_decay_rate=0.5, flat_decay_mult=1.))
    assert {g['weight_decay'] for g in groups.values()} == {0.05}
    # With norm_decay_mult, norms follow it and biases of convs and linears the flat rule.
    groups = groups_by_name(build_layer_decay(model, layer_decay_rate=0.5, flat_decay_mult=1.,
                                              norm_decay_mult=0.))
    norms = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for name, group in groups.items():
        in_norm = isinstance(model.get_submodule(name.rpartition('.')[0]), norms)
        assert group['weight_decay'] == (0. if in_norm else 0.05), name
    assert groups['neck.bias']['weight_decay'] == groups['head.2.bias']['weight_decay'] == 0.05
    assert groups['head.1.bias']['weight_decay'] == 0.
    # bias_decay_mult: biases, norms' included, follow it; other 1-D parameters the flat rule.
    groups = groups_by_name(build_layer_decay(model, layer_decay_rate=0.5, bias_decay_mult=0.,
                                              flat_decay_mult=1.))
    for name, group in groups.items():
        assert group['weight_decay'] == (0. if name.endswith('.bias') else 0.05), name
    assert groups['head.1.weight']['weight_decay'] == 0.05


def test_layer_decay_custom_keys():
    model = TinyDetector(DualFormer(arch=ARCH, out_indices=(3, )))
    groups = groups_by_name(build_layer_decay(
        model, layer_decay_rate=0.5,
        custom_keys={'head': dict(lr_mult=0.1), 'head.1': dict(decay_mult=2.),
                     'stages.3.blocks.1.': dict(lr_mult=3., decay_mult=0.)}))
    assert groups['head.0.weight']['lr'] == pytest.approx(1e-4)
    assert groups['head.0.weight']['weight_decay'] == 0.05
    assert groups['head.0.bias']['weight_decay'] == 0.05  # custom keys override the 1-D rule
    # The longest matching key wins; an unset multiplier is 1.
    assert groups['head.1.weight']['lr'] == pytest.approx(1e-3)
    assert groups['head.1.weight']['weight_decay'] == pytest.approx(0.1)
    last = groups['backbone.stages.3.blocks.1.proj.weight']
    assert last['lr'] == pytest.approx(1e-3 * 0.5 * 3.) and last['weight_decay'] == 0.
    assert groups['neck.weight']['lr'] == pytest.approx(1e-3)


class PlainBackbone(nn.Module):
    """A backbone without get_layer_depth."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 96, 3)


@pytest.mark.parametrize('paramwise_cfg, error, match', [
    (dict(), ValueError, r'paramwise_cfg\.layer_decay_rate, a float in \(0, 1\]'),
    (dict(layer_decay_rate=0), ValueError, r'layer_decay_rate must be a float in \(0, 1\], got 0'),
    (dict(layer_decay_rate=1.5), ValueError, r'layer_decay_rate .* got 1\.5'),
    (dict(layer_decay_rate=-0.5), ValueError, r'layer_decay_rate .* got -0\.5'),
    (dict(layer_decay_rate='0.9'), ValueError, r'layer_decay_rate .* got \'0\.9\''),
    (dict(layer_decay_rate=0.9, dwconv_decay_mult=0.), ValueError,
     r"\['dwconv_decay_mult'\] are not supported; accepted: \['layer_decay_rate'"),
    (dict(layer_decay_rate=0.9, flat_decay_mult=-1), ValueError,
     r'flat_decay_mult must be a number >= 0, got -1'),
    (dict(layer_decay_rate=0.9, custom_keys={'head': dict(momentum=0.5)}), ValueError,
     r"custom_keys\['head'\] must be a dict with keys among \['lr_mult', 'decay_mult'\]"),
], ids=['no-rate', 'rate-0', 'rate-above-1', 'rate-negative', 'rate-str', 'unknown-key',
        'negative-mult', 'custom-key-option'])
def test_layer_decay_constructor_rejects_bad_settings(paramwise_cfg, error, match):
    model = TinyDetector(DualFormer(arch=ARCH, out_indices=(3, )))
    with pytest.raises(error, match=match):
        build_layer_decay(model, **paramwise_cfg)


def test_layer_decay_constructor_needs_lr_and_weight_decay():
    from dualformer_mm.engine import LayerDecayOptimWrapperConstructor
    for optimizer, key in ((dict(type='AdamW', lr=1e-3), 'weight_decay'),
                           (dict(type='AdamW', weight_decay=0.05), 'lr')):
        with pytest.raises(ValueError, match=f'needs optimizer.{key}'):
            LayerDecayOptimWrapperConstructor(dict(optimizer=optimizer),
                                              dict(layer_decay_rate=0.9))


def test_layer_decay_constructor_names_a_backbone_without_depths():
    with pytest.raises(NotImplementedError, match='the backbone PlainBackbone of TinyDetector '
                       r'has no get_layer_depth\(param_name, prefix\)'):
        build_layer_decay(TinyDetector(PlainBackbone()), layer_decay_rate=0.9)
    with pytest.raises(NotImplementedError, match='Linear has neither a backbone nor a '
                       'get_layer_depth'):
        build_layer_decay(nn.Linear(2, 2), layer_decay_rate=0.9)
    # A bare backbone with get_layer_depth is asked directly.
    backbone = DualFormer(arch=ARCH, out_indices=(3, ))
    groups = groups_by_name(build_layer_decay(backbone, layer_decay_rate=0.5))
    assert groups['stem.0.conv.weight']['lr'] == pytest.approx(1e-3 * 0.5**(NUM_LAYERS - 1))
    assert groups['norm3.weight']['lr'] == pytest.approx(1e-3)


def test_layer_decay_constructor_docstring_example():
    import doctest

    from dualformer_mm.engine import optim
    result = doctest.testmod(optim)
    assert result.attempted > 0 and result.failed == 0


def test_layer_decay_groups_train_schedule_and_resume():
    import torch
    from mmengine.optim import LinearLR
    model = TinyDetector(DualFormer(arch=ARCH, out_indices=(3, )))
    wrapper = build_layer_decay(model, layer_decay_rate=0.5)
    scheduler = LinearLR(wrapper.optimizer, start_factor=0.1, by_epoch=False, begin=0, end=10)
    start = [group['lr'] for group in wrapper.optimizer.param_groups]
    before = model.backbone.stem[0].conv.weight.detach().clone()
    wrapper.update_params(model.neck(model.backbone(torch.rand(2, 3, 64, 64))[0]).mean())
    scheduler.step()
    # The scheduler scales every group alike: the decay between depths is kept.
    for group, lr in zip(wrapper.optimizer.param_groups, start):
        assert group['lr'] == pytest.approx(2 * lr)
        assert group['lr'] == pytest.approx(0.2 * 1e-3 * group['lr_scale'])
    assert not torch.equal(before, model.backbone.stem[0].conv.weight)
    # A resumed run's optimizer, built again from the config, takes the saved state.
    resumed = build_layer_decay(TinyDetector(DualFormer(arch=ARCH, out_indices=(3, ))),
                                layer_decay_rate=0.5)
    resumed.load_state_dict(wrapper.state_dict())
    assert [g['lr'] for g in resumed.optimizer.param_groups] == \
        [g['lr'] for g in wrapper.optimizer.param_groups]
    assert len(resumed.optimizer.state) == len(wrapper.optimizer.state) > 0
