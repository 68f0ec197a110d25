"""DualFormer backbone: sizes, the OpenMMLab backbone contract, ablation switches."""
import copy

import pytest
import torch
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import dualformer_mm  # noqa: F401  (registers DualFormer)
from dualformer_mm import DualFormer, ops
from tests.utils import ARCHS

STRIDES = (4, 8, 16, 32)


def out_shape(size, stride):
    """Spatial size after ceil-mode halvings, as 3x3/stride-2/pad-1 convs give."""
    for _ in range(stride.bit_length() - 1):
        size = (size + 1) // 2
    return size


@pytest.mark.parametrize('arch', ARCHS)
def test_every_size_forward_backward(arch):
    # No drop path: with two images a dropped branch would leave its parameters without a
    # gradient by chance (test_drop_path_schedule checks the rates).
    model = DualFormer(arch=arch, drop_path_rate=0.)
    model.init_weights()
    model.train()
    x = torch.rand(2, 3, 64, 96)
    outs = model(x)
    assert len(outs) == 4
    channels = DualFormer.arch_zoo[arch]['channels']
    for out, c, s in zip(outs, channels, STRIDES):
        assert out.shape == (2, c, 64 // s, 96 // s)
        # Plain NCHW memory, whatever layout the network ran in (mmcv's RoIAlign needs it).
        assert out.is_contiguous()
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without a gradient: {missing}'
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
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


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_input_raises(bad):
    x = torch.rand(1, 3, 32, 32)
    x[0, 1, 5, 7] = bad
    with pytest.raises(ValueError, match='NaN or Inf'):
        DualFormer(arch='t')(x)


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
    (dict(partition='spectral'), "'lsh', 'kmeans'"),
    (dict(mode='zigzag'), "'parallel', 'serial'"),
    (dict(intra='mean'), "'pool', 'token'"),
    (dict(norm_cfg=dict(type='LN', momentum=0.1)), 'accepts eps and requires_grad'),
    (dict(use_intra=False, use_inter=False), 'use_intra'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualFormer(arch='t', **kwargs)


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
    attn = [m for m in source.modules() if hasattr(m, 'planes')]
    assert attn and all('planes' in n for n, _ in source.named_buffers() if n.endswith('planes'))
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


@pytest.mark.parametrize('kwargs', [
    dict(mode='serial'),
    dict(use_dwconv=False),
    dict(use_intra=False),
    dict(use_inter=False),
    dict(partition='kmeans'),
    dict(sr_ratios=(1, 1, 1, 1), num_partitions=(2, 4, 16, 4)),
    dict(intra='token'),
    dict(intra='token', use_inter=False),
    dict(norm_cfg=dict(type='GN', num_groups=1)),
    dict(norm_cfg=dict(type='LN')),
])
def test_ablation_switches(kwargs):
    model = DualFormer(arch='t', **kwargs)
    outs = model(torch.rand(2, 3, 48, 40))
    assert [o.shape[1] for o in outs] == [64, 128, 256, 320]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ablation_switches_change_structure():
    serial = DualFormer(arch='t', mode='serial').stages[0].blocks[0]
    assert serial.attn.dims == 64 and serial.split == (64, 64)
    parallel = DualFormer(arch='t').stages[0].blocks[0]
    assert parallel.attn.dims == 32 and parallel.split == (32, 32)
    no_dw = DualFormer(arch='t', use_dwconv=False).stages[0].blocks[0].conv
    assert len(no_dw.layers) == 1
    assert DualFormer(arch='t', use_inter=False).stages[0].blocks[0].attn.aggregate.in_features == 32
    kmeans = DualFormer(arch='t', partition='kmeans').stages[0].blocks[0].attn
    assert not hasattr(kmeans, 'planes')


def test_partition_is_input_dependent():
    attn = DualFormer(arch='t').stages[0].blocks[0].attn
    tokens = torch.randn(2, 1, 100, 32)
    codes = attn.partition_codes(tokens)
    assert codes.shape == (2, 1, 100)
    assert len(codes.unique()) > 2  # tokens spread over several partitions


def test_pretrained_without_checkpoint_falls_back_to_default_init():
    model = DualFormer(arch='t', init_cfg=dict(type='Pretrained', checkpoint=None,
                                               prefix='backbone.'))
    assert model.init_cfg[0]['type'] == 'TruncNormal'
    model.init_weights()
    assert model.stages[1].blocks[0].ffn.fc1.weight.detach().std().item() == pytest.approx(
        0.02, rel=0.2)


@pytest.mark.parametrize('arch', ARCHS)
def test_inference_paths_match_training_graph_path(arch):
    # Without autograd the CPU FFN runs in tiles of pixels; with it, as plain 1x1 convs. And
    # channels_last=False runs everything in NCHW. All three compute the same numbers, and
    # all return contiguous NCHW tensors.
    torch.manual_seed(0)
    model = DualFormer(arch=arch).eval()
    nchw = DualFormer(arch=arch, channels_last=False).eval()
    nchw.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        tiled = model(x)
        plain_layout = nchw(x)
    graph = model(x)
    for a, b, c in zip(tiled, graph, plain_layout):
        assert a.is_contiguous() and c.is_contiguous()  # plain NCHW out, whatever inside
        # fp32 summation order differs; over DualFormer-B's 50 blocks it reaches ~7e-5 on
        # unit-scale outputs, while a wrong tile or layout changes them by O(1).
        torch.testing.assert_close(a, b, rtol=1e-3, atol=3e-4)
        torch.testing.assert_close(a, c, rtol=1e-3, atol=3e-4)


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


@pytest.mark.parametrize('arch', ARCHS)
def test_to_spatial_only_in_downsampled_stages(arch):
    model = DualFormer(arch=arch)
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
        for intra in ('pool', 'token'):
            model = DualFormer(arch='t', intra=intra).to('meta').train()
            x = torch.rand(2, 3, 64, 64, device='meta', requires_grad=True)
            outs = model(x)
            assert [o.device.type for o in outs] == ['meta'] * 4
            sum(o.sum() for o in outs).backward()
            assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize('arch', ARCHS)
def test_training_paths_compute_the_same(arch):
    # The fast training path (channels-last: 1x1 convs as matrix products, the CPU FFN in
    # tiles with its own backward) against plain NCHW convolutions: outputs, the input
    # gradient, every parameter gradient and the BatchNorm statistics after one training step.
    torch.manual_seed(0)
    fast = DualFormer(arch=arch, drop_path_rate=0.1).train()
    plain = DualFormer(arch=arch, drop_path_rate=0.1, channels_last=False).train()
    plain.load_state_dict(fast.state_dict())
    ffn = fast.stages[0].blocks[0].ffn
    x = torch.rand(2, 3, 128, 96).contiguous(memory_format=torch.channels_last)
    stage1 = torch.rand(2, 64, 32, 24, requires_grad=True)
    assert ffn._path(stage1.contiguous(memory_format=torch.channels_last)) == 'tiled_training'
    assert ffn._path(stage1) == 'plain'
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
