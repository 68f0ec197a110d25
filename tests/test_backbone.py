"""DualFormer backbone: sizes, the OpenMMLab backbone contract, ablation switches."""
import copy
import hashlib
import re
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import dualformer_mm  # noqa: F401  (registers DualFormer)
from dualformer_mm import DualFormer, ops
from dualformer_mm.models import AttentionConfig, BlockConfig
from dualformer_mm.models.layers import ffn as ffn_layers
from tests.utils import ARCHS, CUDA

STRIDES = (4, 8, 16, 32)
# Number of tensors and sha256 of the "key shape" lines of DualFormer-T's state dict.
STATE_DICT_T = (452, '18880343bdb113b85a9ec6a8ec874cb4ef694d786089590b12b84c840dda2aab')
# A small arch with every code path of the four sizes: one and several heads, one and several
# blocks a stage, fractional MLP ratios, stages of at most 128 channels (tiled training FFN on
# CPU) and wider ones (plain), MHPA downsampling by 4, 2 and 1.
TINY = dict(depths=[1, 1, 2, 1], channels=[32, 64, 136, 144], num_heads=[1, 2, 2, 3],
            mlp_ratios=[4, 3.5, 2, 1.5])


def out_shape(size, stride):
    """Spatial size after ceil-mode halvings, as 3x3/stride-2/pad-1 convs give."""
    for _ in range(stride.bit_length() - 1):
        size = (size + 1) // 2
    return size


@pytest.mark.parametrize('arch', ARCHS)
def test_every_size_has_table1_stages(arch):
    model = DualFormer(arch=arch).eval()
    settings = DualFormer.arch_zoo[arch]
    assert [len(s.blocks) for s in model.stages] == settings['depths']
    assert [s.blocks[0].attn.num_heads for s in model.stages] == settings['num_heads']
    outs = model(torch.rand(2, 3, 64, 96))
    assert len(outs) == 4
    for out, c, s in zip(outs, settings['channels'], STRIDES):
        assert out.shape == (2, c, 64 // s, 96 // s)
        # Plain NCHW memory, whatever layout the network ran in (mmcv's RoIAlign needs it).
        assert out.is_contiguous()


def train_step(model, x):
    """One forward and backward of a loss over every output; returns the outputs."""
    outs = model(x)
    sum(o.float().pow(2).mean() for o in outs).backward()
    return outs


def test_forward_backward_reaches_every_parameter():
    # No drop path: with two images a dropped branch would leave its parameters without a
    # gradient by chance (test_drop_path_schedule checks the rates).
    model = DualFormer(arch=TINY, drop_path_rate=0.)
    model.init_weights()
    model.train()
    outs = train_step(model, torch.rand(2, 3, 64, 96))
    for out, c, s in zip(outs, TINY['channels'], STRIDES):
        assert out.shape == (2, c, 64 // s, 96 // s) and out.is_contiguous()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without a gradient: {missing}'
    zero = [n for n, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() == 0]
    assert not zero, f'parameters with an all-zero gradient: {zero}'


@pytest.mark.parametrize('alias,name', [('tiny', 't'), ('xsmall', 'xs'), ('small', 's'),
                                        ('base', 'b'), ('T', 't')])
def test_arch_aliases(alias, name):
    assert DualFormer(arch=alias).arch_settings == DualFormer.arch_zoo[name]


@pytest.mark.parametrize('index', [0, 1, 2, 3, -1, (0, 2), (1, 3)])
def test_out_indices(index):
    model = DualFormer(arch='t', out_indices=index).eval()
    wanted = [index % 4] if isinstance(index, int) else list(index)
    outs = model(torch.rand(1, 3, 64, 64))
    assert len(outs) == len(wanted)
    for out, i in zip(outs, wanted):
        assert out.shape == (1, model.channels[i], 64 // STRIDES[i], 64 // STRIDES[i])
    norms = {n for n, _ in model.named_children() if n.startswith('norm')}
    assert norms == {f'norm{i}' for i in wanted}


@pytest.mark.parametrize('hw', [(225, 301), (33, 47), (16, 16), (31, 200), (32, 2048), (8, 8)])
def test_odd_input_sizes(hw):
    model = DualFormer(arch='t').eval()
    outs = model(torch.rand(1, 3, *hw))
    for out, s in zip(outs, STRIDES):
        assert out.shape[-2:] == (out_shape(hw[0], s), out_shape(hw[1], s))
        assert torch.isfinite(out).all()


def test_bad_input_raises_value_error():
    model = DualFormer(arch='t')
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        model(torch.rand(3, 32, 32))


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
@pytest.mark.parametrize('check_finite', ['cpu', 'all'])
def test_non_finite_input_raises_naming_the_images(bad, check_finite):
    model = DualFormer(arch=TINY, check_finite=check_finite)
    x = torch.rand(5, 3, 32, 32)
    x[1, 1, 5, 7] = bad
    x[4, 0, 31, 0] = bad
    with pytest.raises(ValueError, match=r'NaN or Inf values in 2 of 5 images, at batch '
                                         r'indices \[1, 4\]'):
        model(x)
    with pytest.raises(ValueError, match=r'in 1 of 1 images, at batch indices \[0\]'):
        model(x[4:])
    assert all(torch.isfinite(o).all() for o in model(x[2:4]))


def test_check_finite_off_lets_non_finite_input_through():
    model = DualFormer(arch=TINY, check_finite='off').eval()
    x = torch.rand(2, 3, 32, 32)
    x[0, 0, 0, 0] = float('nan')
    outs = model(x)
    assert not torch.isfinite(outs[-1][0]).all()
    with pytest.raises(ValueError, match=r"check_finite must be one of \('cpu', 'all', 'off'\), "
                                         r"got 'gpu'"):
        DualFormer(arch=TINY, check_finite='gpu')


@pytest.mark.parametrize('check_finite, reads', [('cpu', False), ('all', True), ('off', False)])
def test_check_finite_on_other_devices_is_opt_in(check_finite, reads, monkeypatch):
    # A meta tensor stands for a GPU one: a device other than the CPU, whose values the host
    # would have to wait for. Only check_finite='all' reads them there.
    backbone = sys.modules[DualFormer.__module__]
    seen = []
    monkeypatch.setattr(backbone, 'non_finite_images', lambda x: seen.append(x.device) or [])
    model = DualFormer(arch=TINY, check_finite=check_finite)
    model._check_finite(torch.empty(2, 3, 32, 32, device='meta'))
    assert seen == ([torch.device('meta')] if reads else [])
    model._check_finite(torch.rand(2, 3, 32, 32))
    assert len(seen) == int(reads) + int(check_finite != 'off')


@pytest.mark.parametrize('device', [CUDA])
def test_non_finite_input_on_cuda_leaves_the_device_usable(device):
    x = torch.rand(3, 3, 64, 64, device=device)
    x[2, 0, 0, 0] = float('nan')
    model = DualFormer(arch=TINY, check_finite='all').to(device).eval()
    with pytest.raises(ValueError, match=r'at batch indices \[2\]'):
        model(x)
    # By default GPU inputs are not checked: NaN features, no device-side assert.
    model.check_finite = 'cpu'
    with torch.no_grad():
        outs = model(x)
    assert not torch.isfinite(outs[-1][2]).all() and torch.isfinite(outs[-1][:2]).all()
    # The CUDA context is still usable: the next batch runs.
    torch.cuda.synchronize()
    assert all(torch.isfinite(o).all() for o in model(x[:2]))


def test_invalid_and_custom_arch():
    with pytest.raises(ValueError, match="valid names are .*'tiny'"):
        DualFormer(arch='huge')
    with pytest.raises(ValueError, match='channels.*depths.*mlp_ratios.*num_heads'):
        DualFormer(arch=dict(depths=[1, 1, 1, 1], channels=[32, 64, 96, 128]))
    with pytest.raises(ValueError, match="arch\\['depths'\\] needs 4 values"):
        DualFormer(arch=dict(depths=[1, 1, 1], channels=[32, 64, 96, 128],
                             num_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]))
    custom = dict(depths=[1, 1, 2, 1], channels=[32, 64, 96, 128], num_heads=[1, 1, 3, 2],
                  mlp_ratios=[2, 2, 2, 2])
    model = DualFormer(arch=custom).eval()
    assert [o.shape[1] for o in model(torch.rand(1, 3, 32, 32))] == [32, 64, 96, 128]
    assert len(model.stages[2].blocks) == 2


@pytest.mark.parametrize('kwargs,match', [
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(out_indices=()), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(sr_ratios=(2, 2)), 'sr_ratios'),
    (dict(num_partitions=(6, 8, 8, 8)), 'power of two'),
    (dict(norm_cfg=dict(type='LN', momentum=0.1)), 'accepts eps and requires_grad'),
    (dict(attn_cfg=dict(partition='spectral')),
     r"attn_cfg\['partition'\] must be one of \('lsh', 'kmeans'\), got 'spectral'"),
    (dict(attn_cfg=dict(intra='mean')), r"attn_cfg\['intra'\] must be one of \('pool', 'token'\)"),
    (dict(attn_cfg=dict(inter_importance='global')),
     r"attn_cfg\['inter_importance'\] must be one of \('partition', 'joint'\)"),
    (dict(attn_cfg=dict(use_intra=False, use_inter=False)), "'use_intra' and 'use_inter'"),
    (dict(attn_cfg=dict(use_inter='no')), r"attn_cfg\['use_inter'\] must be True or False"),
    (dict(attn_cfg=dict(kmeans_iters=0)), r"attn_cfg\['kmeans_iters'\] must be an int >= 1"),
    (dict(attn_cfg=dict(heads=2, intra='pool')),
     r"attn_cfg has no option 'heads'; the options are \['partition', 'kmeans_iters'"),
    (dict(block_cfg=dict(mode='zigzag')),
     r"block_cfg\['mode'\] must be one of \('parallel', 'serial'\)"),
    (dict(block_cfg=dict(local_branch='dw')),
     r"block_cfg\['local_branch'\] must be one of \('mbconv', 'pointwise', 'none'\)"),
    (dict(block_cfg=dict(conv_ratio=1.0)),
     r"block_cfg\['conv_ratio'\] must be a number in \(0, 1\)"),
    (dict(block_cfg=dict(conv_ratio=0.001)), 'leaves no channels for one of the paths'),
    (dict(block_cfg=dict(intra='token')), "block_cfg has no option 'intra'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualFormer(arch='t', **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(intra='token'), r"'intra': it is an option of attn_cfg, e.g. attn_cfg=dict\(intra="),
    (dict(partition='kmeans'), "'partition': it is an option of attn_cfg"),
    (dict(use_intra=False), "'use_intra': it is an option of attn_cfg"),
    (dict(use_inter=False), "'use_inter': it is an option of attn_cfg"),
    (dict(mode='serial'), "'mode': it is an option of block_cfg"),
    (dict(conv_ratio=0.25), "'conv_ratio': it is an option of block_cfg"),
    (dict(use_dwconv=False), "use_dwconv=False is local_branch='pointwise'"),
    (dict(out_indice=(0, )), "unexpected keyword argument 'out_indice'"),
    (dict(attn_cfg='token'), 'attn_cfg must be a dict or AttentionConfig, got str'),
])
def test_backbone_options_are_named_where_they_belong(kwargs, match):
    with pytest.raises(TypeError, match=match):
        DualFormer(arch='t', **kwargs)


def test_options_reach_every_block_from_a_config():
    # The command-line form of the docs: --cfg-options model.backbone.attn_cfg.intra=token
    cfg = Config(dict(model=dict(backbone=dict(type='DualFormer', arch=TINY))))
    cfg.merge_from_dict({'model.backbone.attn_cfg.intra': 'token',
                         'model.backbone.block_cfg.mode': 'serial'})
    model = MODELS.build(cfg.model.backbone)
    assert model.attn_cfg == AttentionConfig(intra='token')
    assert model.block_cfg == BlockConfig(mode='serial')
    blocks = [b for s in model.stages for b in s.blocks]
    # One object each, given whole to every block and MHPA.
    assert all(b.cfg is model.block_cfg and b.attn.cfg is model.attn_cfg for b in blocks)
    assert all(b.split == (b.attn.dims, b.attn.dims) for b in blocks)


@pytest.mark.parametrize('frozen_stages', [0, 1, 2, 3])
def test_frozen_stages(frozen_stages):
    model = DualFormer(arch='t', frozen_stages=frozen_stages)
    model.train()
    frozen = [model.stem] + [model.stages[i] for i in range(frozen_stages)]
    frozen += [getattr(model, f'norm{i}') for i in range(frozen_stages)]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for i in range(frozen_stages, 4):
        assert model.stages[i].training
        assert all(p.requires_grad for p in model.stages[i].parameters())
    # Frozen weights really do not move under an optimizer step.
    before = copy.deepcopy(model.stem.state_dict())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    sum(o.mean() for o in model(torch.rand(2, 3, 32, 32))).backward()
    opt.step()
    for k, v in model.stem.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_all_stages_frozen():
    model = DualFormer(arch='t', frozen_stages=4)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    owners = [m for m in model.modules() if list(m.parameters(recurse=False))]
    assert owners and not any(m.training for m in owners)


def test_norm_eval():
    model = DualFormer(arch='t', norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    stats = bns[5].running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert torch.equal(stats, bns[5].running_mean)
    assert model.stages[3].training  # only the norms are in eval


def test_with_cp_gives_same_output_and_grads_in_eval():
    model = DualFormer(arch='t', drop_path_rate=0.)
    model_cp = DualFormer(arch='t', drop_path_rate=0., with_cp=True)
    model_cp.load_state_dict(model.state_dict())
    model.eval(), model_cp.eval()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    x_cp = x.detach().clone().requires_grad_()
    out, out_cp = model(x), model_cp(x_cp)
    for a, b in zip(out, out_cp):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in out).backward()
    sum(o.sum() for o in out_cp).backward()
    torch.testing.assert_close(x.grad, x_cp.grad)


def test_drop_path_schedule():
    model = DualFormer(arch='s', drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert all(a < b for a, b in zip(rates, rates[1:]))


def test_init_weights_changes_weights():
    model = DualFormer(arch='t')
    before = model.stages[1].blocks[0].ffn.fc1.weight.clone()
    model.init_weights()
    after = model.stages[1].blocks[0].ffn.fc1.weight
    assert not torch.equal(before, after)
    assert after.detach().std().item() == pytest.approx(0.02, rel=0.2)


# Weights of every kind of conv and linear; Kaiming (what mmcv's ConvModule applies after the
# parent's init) would give a std of sqrt(2 / fan_out): 0.083 for the stem's first conv.
NAMED_WEIGHTS = [
    'stem.0.conv.weight', 'stem.1.conv.weight', 'stages.1.downsample.conv.weight',
    'stages.0.blocks.0.conv.layers.0.conv.weight', 'stages.0.blocks.0.conv.layers.1.conv.weight',
    'stages.0.blocks.0.attn.down.conv.weight', 'stages.0.blocks.0.attn.value.weight',
    'stages.0.blocks.0.attn.to_spatial.weight', 'stages.2.blocks.0.attn.aggregate.weight',
    'stages.0.blocks.0.proj.weight', 'stages.3.blocks.1.ffn.fc2.weight',
]


def test_init_weights_gives_the_documented_statistics():
    model = DualFormer(arch='t')
    model.init_weights()
    params = dict(model.named_parameters())
    for name in NAMED_WEIGHTS:
        weight = params[name].detach()
        assert weight.numel() >= 256, name  # enough values for the std to say something
        assert weight.std().item() == pytest.approx(0.02, rel=0.15), name
        assert weight.abs().max().item() < 0.02 * 6, name  # truncated normal, no outliers
    for name, param in params.items():
        if name.endswith('.bias'):
            norm = name[:-len('bias')] + 'weight'
            is_norm = norm in params and params[norm].dim() == 1
            assert torch.equal(param, torch.zeros_like(param)), name
            if is_norm:
                assert torch.equal(params[norm], torch.ones_like(params[norm])), norm
    # The norms' running statistics start as identity too.
    bn = model.stem[0].norm
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_with_cp_in_training_updates_batchnorm_statistics_once():
    # torch.utils.checkpoint re-runs each block's forward in the backward pass, in training
    # mode; the running statistics must still be those of one forward.
    torch.manual_seed(0)
    model = DualFormer(arch='t', drop_path_rate=0.1).train()
    model_cp = DualFormer(arch='t', drop_path_rate=0.1, with_cp=True).train()
    model_cp.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    grads, outs = [], []
    for net in (model, model_cp):
        torch.manual_seed(1)  # the same drop-path draws
        out = net(x.clone().requires_grad_())
        sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out).backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    buffers, buffers_cp = dict(model.named_buffers()), dict(model_cp.named_buffers())
    checked = 0
    for name, value in buffers.items():
        if 'running' in name or 'num_batches' in name:
            torch.testing.assert_close(buffers_cp[name], value, msg=name, rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked > 100  # every BatchNorm of the blocks, not just the stem
    assert int(buffers_cp['stages.0.blocks.0.norm1.num_batches_tracked']) == 1


def test_pretrained_with_prefix_and_partitions_reproduced(tmp_path):
    """A checkpoint reproduces weights and LSH partitions (the planes are buffers)."""
    source = DualFormer(arch='t').eval()
    ckpt = tmp_path / 'cls.pth'
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 320)
    torch.save({'state_dict': state, 'meta': {}}, ckpt)

    def build():
        model = MODELS.build(dict(type='DualFormer', arch='t', init_cfg=dict(
            type='Pretrained', checkpoint=str(ckpt), prefix='backbone.')))
        model.init_weights()
        return model.eval()

    first, second = build(), build()
    # One set of planes per MHPA, kept as buffers (in the checkpoint), never as parameters.
    planes = [n for n, _ in source.named_buffers() if n.endswith('.attn.planes')]
    assert len(planes) == sum(DualFormer.arch_zoo['t']['depths'])
    assert all(n in state for n in (f'backbone.{p}' for p in planes))
    assert not [n for n, _ in source.named_parameters() if 'planes' in n]
    x = torch.rand(1, 3, 64, 64)
    tokens = torch.randn(1, 1, 49, 32)
    for model in (first, second):
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        mhpa = model.stages[0].blocks[0].attn
        assert torch.equal(mhpa.partition_codes(tokens),
                           source.stages[0].blocks[0].attn.partition_codes(tokens))
        for a, b in zip(model(x), source(x)):
            torch.testing.assert_close(a, b)
    # A fresh build draws other planes, so its partitions differ: the buffers matter.
    fresh = DualFormer(arch='t').stages[0].blocks[0].attn
    assert not torch.equal(fresh.planes, source.stages[0].blocks[0].attn.planes)


# Every switch of Tables 5 and 6 and every reading, alone and in the combinations the
# ablations use (docs/architecture.md, "Ablation switches").
SWITCHES = [
    dict(),
    dict(block_cfg=dict(mode='serial')),
    dict(block_cfg=dict(local_branch='pointwise')),
    dict(block_cfg=dict(local_branch='none')),
    dict(block_cfg=dict(local_branch='none', mode='serial')),
    dict(block_cfg=dict(local_branch='pointwise'), attn_cfg=dict(use_inter=False)),
    dict(block_cfg=dict(local_branch='pointwise'), attn_cfg=dict(use_intra=False)),
    dict(block_cfg=dict(conv_ratio=0.25)),
    dict(attn_cfg=dict(use_intra=False)),
    dict(attn_cfg=dict(use_inter=False)),
    dict(attn_cfg=dict(partition='kmeans')),
    dict(attn_cfg=dict(intra='token')),
    dict(attn_cfg=dict(intra='token', use_inter=False)),
    dict(attn_cfg=dict(inter_importance='joint')),
    dict(attn_cfg=dict(inter_importance='joint', intra='token', partition='kmeans')),
    dict(sr_ratios=(1, 1, 1, 1), num_partitions=(2, 4, 16, 4)),
    dict(norm_cfg=dict(type='GN', num_groups=1)),
    dict(norm_cfg=dict(type='LN')),
]


@pytest.mark.parametrize('kwargs', SWITCHES, ids=str)
def test_ablation_switches_train(kwargs):
    # Shapes, and a training step in which every parameter has a gradient.
    model = DualFormer(arch=TINY, drop_path_rate=0., **kwargs).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(2, 3, 48, 40)
    outs = train_step(model, x)
    assert [tuple(o.shape) for o in outs] == [
        (2, c, out_shape(48, s), out_shape(40, s)) for c, s in zip(TINY['channels'], STRIDES)]
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f'parameters without a gradient: {no_grad}'
    opt.step()
    with torch.no_grad():
        after = model(x)
    assert all(torch.isfinite(o).all() for o in after)
    assert not torch.allclose(after[-1], outs[-1])


def test_ablation_switches_change_structure():
    serial = DualFormer(arch='t', block_cfg=dict(mode='serial')).stages[0].blocks[0]
    assert serial.attn.dims == 64 and serial.split == (64, 64)
    parallel = DualFormer(arch='t').stages[0].blocks[0]
    assert parallel.attn.dims == 32 and parallel.split == (32, 32)
    assert len(parallel.conv.layers) == 2 and parallel.conv.layers[1].conv.groups == 32
    pointwise = DualFormer(arch='t', block_cfg=dict(local_branch='pointwise')).stages[0].blocks[0]
    assert len(pointwise.conv.layers) == 1 and pointwise.conv.layers[0].conv.kernel_size == (1, 1)
    no_inter = DualFormer(arch='t', attn_cfg=dict(use_inter=False)).stages[0].blocks[0].attn
    assert no_inter.aggregate.in_features == 32 and not hasattr(no_inter, 'importance')
    kmeans = DualFormer(arch='t', attn_cfg=dict(partition='kmeans')).stages[0].blocks[0].attn
    assert not hasattr(kmeans, 'planes')
    # Per partition: one descriptor (d) in, one coefficient out. Joint: the K descriptors of a
    # head in, K coefficients out; the bottleneck is the same.
    per_partition = parallel.attn.importance
    joint = DualFormer(arch='t', attn_cfg=dict(inter_importance='joint')).stages[0].blocks[0]
    assert (per_partition[0].in_features, per_partition[2].out_features) == (32, 1)
    assert (joint.attn.importance[0].in_features, joint.attn.importance[2].out_features) == (
        8 * 32, 8)
    assert joint.attn.importance[0].out_features == per_partition[0].out_features == 8


def test_local_branch_none_has_no_convolution_branch():
    torch.manual_seed(0)
    model = DualFormer(arch=TINY, block_cfg=dict(local_branch='none')).eval()
    assert not [n for n, _ in model.named_parameters() if re.search(r'blocks\.\d+\.conv\.', n)]
    assert [n for n, _ in DualFormer(arch=TINY).named_parameters()
            if re.search(r'blocks\.\d+\.conv\.', n)]  # the pattern finds MBConv's
    for stage, dims in zip(model.stages, TINY['channels']):
        for block in stage.blocks:
            # MHPA takes every channel; the conv share of the parallel split is gone.
            assert block.conv is None and block.attn.dims == dims and block.split == (0, dims)
    # The block is Proj(MHPA(Norm(x))) and the FFN, computed here from its own layers.
    block = model.stages[1].blocks[0]
    x = torch.randn(2, 64, 9, 7)
    with torch.no_grad():
        y = x + block.proj(block.attn(block.norm1(x)))
        want = y + block.ffn(block.norm2(y))
        torch.testing.assert_close(block(x), want)
    # Serial and parallel are the same block without a conv branch.
    serial = DualFormer(arch=TINY, block_cfg=dict(local_branch='none', mode='serial')).eval()
    serial.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        for a, b in zip(model(image), serial(image)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_local_branch_pointwise_is_the_1x1_conv_of_mbconv():
    torch.manual_seed(0)
    full = DualFormer(arch=TINY).eval()
    pointwise = DualFormer(arch=TINY, block_cfg=dict(local_branch='pointwise')).eval()
    missing, unexpected = pointwise.load_state_dict(full.state_dict(), strict=False)
    # The only weights the pointwise branch lacks are the depth-wise conv and its norm.
    assert not missing and unexpected and all('.conv.layers.1.' in n for n in unexpected)
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        first = full.stages[0].blocks[0].conv.layers[0]
        torch.testing.assert_close(pointwise.stages[0].blocks[0].conv(x), first(x))
        # Without the depth-wise conv the block computes something else.
        image = torch.rand(1, 3, 40, 48)
        assert not torch.allclose(full(image)[0], pointwise(image)[0])


def test_state_dict_keys_of_the_default_model_are_stable():
    # Checkpoints name their tensors so (state-dict layout 2); a change of a key or shape
    # needs a new DualFormer._version and a migration of the old keys in its
    # _load_from_state_dict (tests/test_state_dict.py).
    state = DualFormer(arch='t').state_dict()
    listing = '\n'.join(f'{k} {tuple(v.shape)}' for k, v in state.items())
    assert len(state) == STATE_DICT_T[0]
    assert hashlib.sha256(listing.encode()).hexdigest() == STATE_DICT_T[1]


def test_kmeans_partitions_are_lloyd_steps_from_evenly_spaced_tokens():
    model = DualFormer(arch=TINY, attn_cfg=dict(partition='kmeans', kmeans_iters=2)).eval()
    attn = model.stages[1].blocks[0].attn
    assert attn.cfg.kmeans_iters == 2
    tokens = torch.randn(2, attn.num_heads, 24, attn.head_dims)
    codes = attn.partition_codes(tokens)
    # An independent float64 Lloyd: K centroids at evenly spaced tokens, two steps, nearest
    # centroid (a centroid left without tokens stays where it was).
    x = tokens.double().flatten(0, 1)
    k = attn.num_partitions
    centroids = x[:, torch.linspace(0, 23, k).round().long()]
    for _ in range(2):
        assign = (x[:, :, None] - centroids[:, None]).pow(2).sum(-1).argmin(-1)
        one_hot = torch.nn.functional.one_hot(assign, k).double()  # (G, n, K)
        counts = one_hot.sum(1)
        means = one_hot.transpose(1, 2) @ x / counts.clamp(min=1)[..., None]
        centroids = torch.where(counts[..., None] > 0, means, centroids)
    want = (x[:, :, None] - centroids[:, None]).pow(2).sum(-1).argmin(-1)
    assert torch.equal(codes.flatten(0, 1), want)
    assert len(want.unique()) > 2


def test_sr_ratios_and_num_partitions_reach_every_stage():
    seen = {}
    ratios, parts_per_stage = (2, 4, 1, 1), (2, 4, 16, 8)
    model = DualFormer(arch=TINY, sr_ratios=ratios, num_partitions=parts_per_stage).eval()
    attns = {f'stage{i}': s.blocks[0].attn for i, s in enumerate(model.stages)}
    for name, attn in attns.items():
        attn.value.register_forward_hook(lambda m, a, o, name=name: seen.update({name: a[0]}))
    model(torch.rand(2, 3, 128, 160))
    for i, (name, attn) in enumerate(attns.items()):
        k, parts = ratios[i], parts_per_stage[i]
        h, w = out_shape(128, STRIDES[i]), out_shape(160, STRIDES[i])
        assert attn.sr_ratio == k and attn.num_partitions == parts
        assert isinstance(attn.down, torch.nn.Identity) == (k == 1)
        # MHPA hashes ceil(h/k) x ceil(w/k) tokens of this stage, with log2(K) planes a head.
        tokens = seen[name]
        assert tokens.shape[1] == -(-h // k) * -(-w // k)
        assert attn.planes.shape == (attn.num_heads, attn.head_dims, parts.bit_length() - 1)
        batch, n, _ = tokens.shape
        codes = attn.partition_codes(
            tokens.view(batch, n, attn.num_heads, -1).transpose(1, 2))
        assert 0 <= int(codes.min()) and int(codes.max()) < parts
        assert len(codes.unique()) > 1  # the planes really split this stage's tokens


@pytest.mark.parametrize('norm', ['GN', 'LN', 'BN'])
def test_per_sample_norms_make_the_batch_independent(norm):
    # GN (one group) and LN normalise each image on its own: in training, an image's features
    # do not depend on the other images of the batch. BatchNorm's batch statistics do.
    cfg = dict(type='GN', num_groups=1) if norm == 'GN' else dict(type=norm)
    model = DualFormer(arch=TINY, drop_path_rate=0., norm_cfg=cfg).train()
    x = torch.rand(2, 3, 48, 40)
    other = x.clone()
    other[1] = torch.rand(3, 48, 40) * 2
    with torch.no_grad():
        outs, outs_other = model(x), model(other)
    for a, b in zip(outs, outs_other):
        if norm == 'BN':
            assert not torch.allclose(a[0], b[0], atol=1e-3)
        else:
            torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_partition_codes_follow_the_tokens_not_their_positions():
    attn = DualFormer(arch='t').stages[0].blocks[0].attn
    tokens = torch.randn(2, 1, 100, 32)
    codes = attn.partition_codes(tokens)
    assert codes.shape == (2, 1, 100)
    assert len(codes.unique()) > 2  # tokens spread over several partitions
    # Each token's code is a function of the token: permuting the tokens permutes the codes.
    perm = torch.randperm(100)
    assert torch.equal(attn.partition_codes(tokens[:, :, perm]), codes[:, :, perm])
    # Eq. 4 looks at the side of each hyperplane: a positive scale keeps every code, and
    # negation moves every token to the other side of every plane (all 3 bits flip).
    assert torch.equal(attn.partition_codes(tokens * 3.5), codes)
    assert torch.equal(attn.partition_codes(-tokens), codes ^ (attn.num_partitions - 1))


def test_pretrained_without_checkpoint_falls_back_to_default_init():
    model = DualFormer(arch='t', init_cfg=dict(type='Pretrained', checkpoint=None,
                                               prefix='backbone.'))
    assert model.init_cfg[0]['type'] == 'TruncNormal'
    model.init_weights()
    assert model.stages[1].blocks[0].ffn.fc1.weight.detach().std().item() == pytest.approx(
        0.02, rel=0.2)


@pytest.mark.parametrize('tile', ['default', 'small'])
def test_inference_paths_match_training_graph_path(tile, monkeypatch):
    # Without autograd the CPU FFN runs in tiles of pixels; with it, as plain 1x1 convs. And
    # channels_last=False runs everything in NCHW. All three compute the same numbers, and
    # all return contiguous NCHW tensors. 'small' tiles: 64 pixels, many tiles and a remainder.
    if tile == 'small':
        monkeypatch.setattr(ffn_layers, 'FFN_TILE_ELEMENTS', 1)
    torch.manual_seed(0)
    model = DualFormer(arch=TINY).eval()
    nchw = DualFormer(arch=TINY, channels_last=False).eval()
    nchw.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        tiled = model(x)
        plain_layout = nchw(x)
    graph = model(x)
    for a, b, c in zip(tiled, graph, plain_layout):
        assert a.is_contiguous() and c.is_contiguous()  # plain NCHW out, whatever inside
        # fp32 summation order differs; a wrong tile or layout changes the outputs by O(1).
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_batch_of_one():
    model = DualFormer(arch='t', drop_path_rate=0.).train()
    outs = model(torch.rand(1, 3, 96, 64))  # a 3x2 last stage: BatchNorm has 6 values
    assert all(torch.isfinite(o).all() for o in outs)
    # A 1x1 last stage: one value per channel, named instead of failing inside BatchNorm.
    with pytest.raises(ValueError, match='batch of 1 image of 16x16 .* batch of at least 2'):
        model(torch.rand(1, 3, 16, 16))
    assert model(torch.rand(2, 3, 16, 16))[3].shape == (2, 320, 1, 1)
    model.eval()
    assert model(torch.rand(1, 3, 16, 16))[3].shape == (1, 320, 1, 1)
    frozen_norms = DualFormer(arch='t', norm_eval=True).train()
    assert frozen_norms(torch.rand(1, 3, 16, 16))[3].shape == (1, 320, 1, 1)
    group_norm = DualFormer(arch='t', norm_cfg=dict(type='GN', num_groups=1)).train()
    assert torch.isfinite(group_norm(torch.rand(1, 3, 16, 16))[3]).all()


@pytest.mark.parametrize('norm,cls', [('LN', 'LayerNorm2d'), ('LN2d', 'LayerNorm2d'),
                                      ('GN', 'GroupNorm'), ('BN', 'BatchNorm2d')])
def test_norm_types_normalise_nchw_maps(norm, cls):
    cfg = dict(type=norm, num_groups=1) if norm == 'GN' else dict(type=norm)
    model = DualFormer(arch='t', norm_cfg=cfg)
    norms = {type(m).__name__ for m in model.modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, _BatchNorm))}
    assert norms == {cls}
    if norm.startswith('LN'):
        # Over the channels of each pixel: every pixel of the output has mean 0 and std 1
        # before the affine (identity at init).
        model.init_weights()
        out = model.norm0(torch.randn(2, 64, 5, 7) * 3 + 1)
        torch.testing.assert_close(out.mean(1), torch.zeros(2, 5, 7), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(2, 5, 7),
                                   atol=1e-3, rtol=0)


def test_to_spatial_only_in_downsampled_stages():
    model = DualFormer(arch=TINY)
    for stage, k in zip(model.stages, (4, 2, 1, 1)):
        for block in stage.blocks:
            assert block.attn.sr_ratio == k
            assert isinstance(block.attn.to_spatial, torch.nn.Identity) == (k == 1)
    assert not any('to_spatial' in n for n, _ in model.stages[2].named_parameters())


def test_forward_and_backward_never_wait_for_the_device():
    # On a GPU, reading a tensor's value on the host (.item(), bool(), data-dependent shapes)
    # waits for the device. Meta tensors have no values: any such read raises, so a whole
    # training step on the meta device proves the path has none (the CUDA path of every check
    # that differs from CPU, e.g. the finite-input check, is the one taken for meta).
    with ops.use_backend('reference'):
        for kwargs in SWITCHES:
            model = DualFormer(arch=TINY, **kwargs).to('meta').train()
            x = torch.rand(2, 3, 64, 64, device='meta', requires_grad=True)
            outs = model(x)
            assert [o.device.type for o in outs] == ['meta'] * 4
            sum(o.sum() for o in outs).backward()
            assert x.grad is not None and x.grad.shape == x.shape


def test_training_paths_compute_the_same():
    # The fast training path (channels-last: 1x1 convs as matrix products, the CPU FFN in
    # tiles with its own backward) against plain NCHW convolutions: outputs, the input
    # gradient, every parameter gradient and the BatchNorm statistics after one training step.
    torch.manual_seed(0)
    fast = DualFormer(arch=TINY, drop_path_rate=0.1).train()
    plain = DualFormer(arch=TINY, drop_path_rate=0.1, channels_last=False).train()
    plain.load_state_dict(fast.state_dict())
    ffn = fast.stages[0].blocks[0].ffn
    x = torch.rand(2, 3, 128, 96).contiguous(memory_format=torch.channels_last)
    stage1 = torch.rand(2, 32, 32, 24, requires_grad=True)
    assert ffn._path(stage1.contiguous(memory_format=torch.channels_last)) == 'tiled_training'
    assert ffn._path(stage1) == 'plain'
    wide = fast.stages[2].blocks[0].ffn  # 136 channels: plain convolutions in training too
    assert wide._path(torch.rand(2, 136, 8, 6, requires_grad=True).contiguous(
        memory_format=torch.channels_last)) == 'plain'
    results = []
    for model in (fast, plain):
        torch.manual_seed(1)  # the same drop-path draws
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs).backward()
        results.append((outs, inp.grad, {n: p.grad for n, p in model.named_parameters()},
                        {n: b for n, b in model.named_buffers() if 'running' in n}))
    (outs_a, gx_a, grads_a, stats_a), (outs_b, gx_b, grads_b, stats_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-3, atol=1e-3 * gx_b.abs().max().item())
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_b.items():
        torch.testing.assert_close(grads_a[name], grad, rtol=1e-3,
                                   atol=1e-3 * grad.abs().max().item() + 1e-7, msg=name)
    for name, value in stats_b.items():
        torch.testing.assert_close(stats_a[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_docstring_examples():
    import doctest

    from dualformer_mm.models.backbones import dualformer as backbone
    from dualformer_mm.models.utils import mbconv, options, partition_attention
    for module in (options, mbconv, partition_attention, backbone):
        result = doctest.testmod(module, extraglobs=dict(torch=torch))
        assert result.attempted > 0 and result.failed == 0, module.__name__
