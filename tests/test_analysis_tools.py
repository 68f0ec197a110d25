# Copyright (c) dualformer-mm contributors.
"""The analysis tools of the paper's Figures 5 and 6: the Fourier analysis of feature maps
(``tools/analysis/fourier.py``) and the LSH partition drawings
(``tools/visualization/partitions.py``), their ``main()`` run on tiny inputs, and the Fourier
core on inputs whose spectrum is known.
"""
import doctest
import importlib.util
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from dualformer_mm import DualFormer
from dualformer_mm.visualization import draw_partitions, record_partitions
from dualformer_mm.visualization.partitions import (draw_partition_grid, partition_capacity,
                                                    partition_figure)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/mmpretrain/dualformer_t_in1k.py'
DEPTHS_T = [2, 2, 4, 2]  # DualFormer-T, Table 1
HEADS_T = [1, 2, 4, 5]


def _load_tool(relpath: str):
    """Import a script of tools/ as a module."""
    name = 'tool_' + osp.basename(relpath)[:-3]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_image(path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width > 100 and img.height > 100


@pytest.fixture(scope='module')
def fourier():
    return _load_tool('tools/analysis/fourier.py')


def test_fourier_core_known_spectra(fourier):
    size = 16
    freqs, delta = fourier.relative_log_amplitude(torch.ones(2, 4, size, size))
    assert freqs.shape == delta.shape == (size // 2 + 1, )
    assert float(freqs[0]) == 0 and math.isclose(float(freqs[-1]), math.pi)
    assert float(delta[0]) == 0
    # A constant map has only the zero frequency: its high frequencies sit at log(eps).
    assert float(delta[-1]) < -10
    # White noise has a flat spectrum; at pi the (real) coefficient is distributed as at 0.
    _, noise = fourier.relative_log_amplitude(torch.randn(8, 64, size, size))
    assert abs(float(noise[-1])) < 0.5
    # A checkerboard is all pi: the zero frequency is empty instead.
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    checker = ((-1.0) ** (ii + jj)).expand(1, 3, size, size)
    _, board = fourier.relative_log_amplitude(checker)
    assert float(board[-1]) > 10
    # Smoothing removes high frequencies: the blurred noise falls below the noise.
    blurred = torch.nn.functional.avg_pool2d(torch.randn(8, 64, size + 2, size + 2), 3, 1)
    _, smooth = fourier.relative_log_amplitude(blurred)
    assert float(smooth[-1]) < float(noise[-1]) - 1
    with pytest.raises(ValueError, match='at least 2x2'):
        fourier.relative_log_amplitude(torch.rand(1, 3, 1, 1))


def test_fourier_rejects_bad_arguments(fourier, capsys):
    with pytest.raises(SystemExit):
        fourier.parse_args(['--peer', 'vit-b'])
    err = capsys.readouterr().err
    assert '--peer' in err and all(name in err for name in ('swin-t', 'convnext-t',
                                                              'pvtv2-b2', 'none'))
    with pytest.raises(SystemExit):
        fourier.parse_args(['--size', '32'])
    assert '--size must be >= 64' in capsys.readouterr().err


def test_fourier_tool(fourier, tmp_path, capsys, monkeypatch):
    out_json, out_png = tmp_path / 'fourier.json', tmp_path / 'fourier.png'
    monkeypatch.chdir(ROOT)
    fourier.main(['--config', CONFIG, '--size', '64', '--images', '2', '--peer', 'swin-t',
                  '--json', str(out_json), '--png', str(out_png)])
    stdout = capsys.readouterr().out
    assert 'randomly initialised' in stdout  # the honesty note
    data = json.loads(out_json.read_text())
    layers = data['models']['dualformer']['layers']
    assert len(layers) == sum(DEPTHS_T)
    assert [row['stage'] for row in layers] == [i for i, d in enumerate(DEPTHS_T)
                                                for _ in range(d)]
    assert layers[-1]['depth'] == 1.0 and layers[-1]['shape'] == [2, 2]
    assert len(data['models']['swin-t']['layers']) == 12  # Swin-T depths 2-2-6-2
    for entry in data['models'].values():
        for row in entry['layers']:
            assert np.isfinite(row['delta']).all() and np.isfinite(row['delta_high'])
            assert row['delta'][0] == 0
    assert data['settings']['images'] == 2 and data['notes']
    _assert_image(out_png)
    table = [line for line in stdout.splitlines() if line.startswith('dualformer ')]
    assert len(table) == sum(DEPTHS_T)


def test_partitions_tool_all_heads(tmp_path, capsys, monkeypatch):
    out_png, out_json = tmp_path / 'vis' / 'partitions.png', tmp_path / 'partitions.json'
    monkeypatch.chdir(ROOT)
    _load_tool('tools/visualization/partitions.py').main(
        [CONFIG, '--size', '64', '--all-heads', '--out', str(out_png), '--json', str(out_json)])
    assert f'wrote {out_png}' in capsys.readouterr().out
    _assert_image(out_png)
    panels = json.loads(out_json.read_text())['panels']
    heads = [sum(p['stage'] == s for p in panels) for s in range(4)]
    assert heads == HEADS_T  # one panel per head of the first block of the 4 stages
    assert all(p['block'] == 0 for p in panels)
    assert all(1 <= p['num_partitions'] <= p['max_partitions'] == 8 for p in panels)


def test_partitions_rejects_bad_arguments(capsys):
    tool = _load_tool('tools/visualization/partitions.py')
    with pytest.raises(SystemExit):
        tool.parse_args([CONFIG, '--size', '1', '2', '3'])
    assert '--size takes H W or one number' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(['configs/no_such_config.py'])
    assert 'no such file' in capsys.readouterr().err


def test_partition_grid_and_strip(tmp_path):
    backbone = DualFormer(arch='t').eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    records = record_partitions(backbone, tensor)
    panels = draw_partition_grid(image, records, str(tmp_path / 'grid.png'))
    assert [p['stage'] for p in panels] == [0, 1, 2, 3]
    assert all(p['head'] == 0 and 1 <= p['num_partitions'] <= 8 for p in panels)
    every = draw_partition_grid(image, records, str(tmp_path / 'all.png'), all_blocks=True)
    assert len(every) == sum(DEPTHS_T)
    _assert_image(tmp_path / 'grid.png')
    # The strip of tools/run_demo.py: one row, the input and the first block of each stage.
    names = draw_partitions(image, records, str(tmp_path / 'strip.png'), title='demo')
    assert names == [f'stages.{i}.blocks.0.attn' for i in range(4)]
    height, width, _ = np.asarray(Image.open(tmp_path / 'strip.png')).shape
    assert width > 2.5 * height


def _title_lines(panel, sr_ratio, image_shape, heads):
    """What a panel's title must say of the module it shows, from the model's own geometry."""
    stride = 4 * 2**panel['stage']
    # MHPA partitions the stage's map after its own stride-sr downsampling, padded up.
    grid = [math.ceil(side / stride / sr_ratio) for side in image_shape]
    return [f"stage {panel['stage'] + 1}, stride {stride}",
            f"block {panel['block'] + 1}, head {panel['head'] + 1} of {heads}",
            f"{panel['num_partitions']} of 8 partitions, {grid[0]}x{grid[1]} tokens"]


@pytest.mark.parametrize('all_heads', [False, True])
def test_partition_panels_name_stage_stride_head_grid_and_partitions(all_heads):
    torch.manual_seed(0)
    backbone = DualFormer(arch='t').eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    records = record_partitions(backbone, tensor)
    fig, panels = partition_figure(image, records, all_heads=all_heads,
                                   capacity=partition_capacity(backbone), title='the command')
    assert fig._suptitle.get_text() == 'the command'
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    inputs = [t for t in titles if t.startswith('input')]
    # One input panel per row: one row without all_heads, one per stage with it.
    assert inputs == ['input, 64x96'] * (4 if all_heads else 1)
    drawn = [t for t in titles if not t.startswith('input')]
    assert drawn == [p['title'] for p in panels]
    heads = [sum(p['stage'] == s for p in panels) for s in range(4)]
    assert heads == (HEADS_T if all_heads else [1] * 4)
    for panel in panels:
        module = backbone.get_submodule(panel['module'])
        codes = records[panel['module']][panel['head']]
        assert panel['title'].split('\n') == _title_lines(
            panel, module.sr_ratio, image.shape[:2], HEADS_T[panel['stage']])
        assert panel['num_partitions'] == len(torch.unique(codes))
        assert panel['max_partitions'] == module.num_partitions == 8
        assert panel['grid'] == list(codes.shape) and panel['stride'] == 4 * 2**panel['stage']
    # Without the capacities, a panel counts what its tokens fill.
    _, bare = partition_figure(image, records)
    assert bare[0]['title'].endswith(f"{bare[0]['num_partitions']} partitions, "
                                     f"{bare[0]['grid'][0]}x{bare[0]['grid'][1]} tokens")
    assert bare[0]['max_partitions'] is None


def test_partition_drawing_docstring_examples():
    from dualformer_mm.visualization import partitions
    result = doctest.testmod(partitions)
    assert result.failed == 0 and result.attempted > 0
