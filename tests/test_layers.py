"""The CPU mechanics under the block: the tiled FFN and checkpointing that keeps BN statistics.

Each fast path is compared with the plain computation it replaces: the FFN's tiles with two
1x1 convolutions (forward, every gradient, float64 gradcheck of the tiled backward), and a
checkpointed re-run with a single forward (BatchNorm running statistics).
"""
import pytest
import torch
import torch.nn as nn
import torch.utils.checkpoint

from dualformer_mm.models.layers import (FFN, checkpoint_keeping_statistics, ffn_over_tiles,
                                         is_channels_last, keep_running_statistics)
from dualformer_mm.models.layers import ffn as ffn_layers
from dualformer_mm.models.layers.ffn import TiledFFNFunction


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def test_is_channels_last():
    x = torch.rand(2, 3, 4, 5)
    assert not is_channels_last(x) and is_channels_last(channels_last(x))
    assert not is_channels_last(torch.rand(3, 4))
    # One channel: both layouts are the same memory, and the pixels are matrix rows.
    assert is_channels_last(torch.rand(2, 1, 4, 5))


@pytest.mark.parametrize('rows', [1, 7, 64, 1000])
def test_ffn_over_tiles_is_the_two_products(rows):
    x, w1, b1 = torch.randn(150, 12), torch.randn(40, 12), torch.randn(40)
    w2, b2 = torch.randn(9, 40), torch.randn(9)
    want = nn.functional.gelu(x @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(ffn_over_tiles(x, w1, b1, w2, b2, nn.GELU(), rows), want)


@pytest.mark.parametrize('rows', [5, 16])
def test_tiled_backward_gradcheck_float64(rows):
    torch.manual_seed(0)
    args = [torch.randn(23, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(10, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(10, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 10, dtype=torch.float64, requires_grad=True),
            torch.randn(3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda *a: TiledFFNFunction.apply(*a, nn.GELU(), rows), args)


def test_ffn_chooses_its_path():
    narrow, wide = FFN(16, 64), FFN(FFN.TILED_TRAINING_MAX_DIMS + 8, 64)
    x = torch.rand(2, 16, 5, 7)
    assert narrow._path(x) == 'plain'  # NCHW
    assert narrow._path(channels_last(x)) == 'tiled_training'  # weights need gradients
    with torch.no_grad():
        assert narrow._path(channels_last(x)) == 'tiled'
    assert wide._path(channels_last(torch.rand(2, wide.fc1.in_channels, 5, 7))) == 'plain'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert narrow._path(channels_last(x)) == 'plain'
    assert narrow._path(channels_last(x).to('meta')) == 'plain'


@pytest.mark.parametrize('tile_elements', [1, ffn_layers.FFN_TILE_ELEMENTS])
def test_ffn_paths_compute_the_plain_convolutions(tile_elements, monkeypatch):
    # 1 element: tiles of 64 pixels, several tiles and a remainder of 13 pixels.
    monkeypatch.setattr(ffn_layers, 'FFN_TILE_ELEMENTS', tile_elements)
    torch.manual_seed(0)
    ffn = FFN(16, 72)
    x = torch.randn(3, 16, 11, 7)  # 231 pixels

    def plain(inp):
        return ffn.fc2(ffn.act(ffn.fc1(inp)))

    with torch.no_grad():
        torch.testing.assert_close(ffn(channels_last(x)), plain(x))
    results = []
    for path, inp in (('tiled_training', channels_last(x)), ('plain', x)):
        ffn.zero_grad()
        inp = inp.clone().requires_grad_()
        assert ffn._path(inp) == path
        out = ffn(inp)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append((out, inp.grad, [p.grad.clone() for p in ffn.parameters()]))
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = results
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(gx_a, gx_b)
    for a, b in zip(gp_a, gp_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_keep_running_statistics_restores_every_batchnorm_in_training():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    model.train()
    model(torch.randn(4, 3, 5, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with keep_running_statistics(model):
        model(torch.randn(4, 3, 5, 5) * 5 + 2)
        assert not torch.equal(model[0].running_mean, before['0.running_mean'])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_checkpoint_updates_statistics_once_and_gives_the_same_gradients():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())
    checkpointed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())
    checkpointed.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 6, 6)
    grads = []
    for model, run in ((reference, lambda m, x: m(x)),
                       (checkpointed, lambda m, x: checkpoint_keeping_statistics(m, x, m))):
        inp = x.clone().requires_grad_()
        run(model.train(), inp).square().sum().backward()
        grads.append((inp.grad, [p.grad for p in model.parameters()]))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[key], value, msg=key)
    assert int(checkpointed[1].num_batches_tracked) == 1
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)
    # Control: torch's checkpoint alone runs the BatchNorm update twice.
    unguarded = nn.BatchNorm2d(3).train()
    out = torch.utils.checkpoint.checkpoint(unguarded, torch.randn(2, 3, 4, 4, requires_grad=True),
                                            use_reentrant=False)
    out.sum().backward()
    assert int(unguarded.num_batches_tracked) == 2
