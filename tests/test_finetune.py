"""Fine-tuning conventions: layer-wise learning-rate decay and weight-decay exclusions, as
mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` (through
``DualFormer.get_layer_depth``) and timm's ``create_optimizer_v2`` (through
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
