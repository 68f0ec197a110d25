"""DualFormer backbone: sizes, the OpenMMLab backbone contract, ablation switches."""
import copy

import pytest
import torch
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import dualformer_mm  # noqa: F401  (registers DualFormer)
from dualformer_mm import DualFormer
from tests.utils import ARCHS

STRIDES = (4, 8, 16, 32)


def out_shape(size, stride):
    """Spatial size after ceil-mode halvings, as 3x3/stride-2/pad-1 convs give."""
    for _ in range(stride.bit_length() - 1):
        size = (size + 1) // 2
    return size


@pytest.mark.parametrize('arch', ARCHS)
def test_every_size_forward_backward(arch):
    model = DualFormer(arch=arch, drop_path_rate=0.1)
    model.init_weights()
    model.train()
    x = torch.rand(2, 3, 64, 96)
    outs = model(x)
    assert len(outs) == 4
    channels = DualFormer.arch_zoo[arch]['channels']
    for out, c, s in zip(outs, channels, STRIDES):
        assert out.shape == (2, c, 64 // s, 96 // s)
        assert out.is_contiguous() or out.dim() == 4
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


def test_with_cp_gives_same_output_and_grads():
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
    before = model.stages[1].blocks[0].ffn[0].weight.clone()
    model.init_weights()
    after = model.stages[1].blocks[0].ffn[0].weight
    assert not torch.equal(before, after)
    assert after.detach().std().item() == pytest.approx(0.02, rel=0.2)


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
    assert model.stages[1].blocks[0].ffn[0].weight.detach().std().item() == pytest.approx(
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
