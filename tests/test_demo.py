"""A shortened ``make demo``: every task trains, evaluates and draws, through the real runners."""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dualformer_mm.demo import make_demo_datasets

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.slow
def test_demo_quick_run(tmp_path):
    work, data = tmp_path / 'work', tmp_path / 'data'
    result = subprocess.run(
        [sys.executable, 'tools/run_demo.py', '--quick', '--work-dir', str(work), '--data-root',
         str(data)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((work / 'summary.json').read_text())
    assert sorted(summary) == ['cls', 'det', 'seg']
    expected = {'cls': {'accuracy/top1'}, 'det': {'coco/bbox_mAP', 'coco/segm_mAP'},
                'seg': {'mIoU'}}
    for task, keys in expected.items():
        assert set(summary[task]['before']) == keys == set(summary[task]['after'])
        assert osp.exists(summary[task]['checkpoint'])
    assert '| det | mask AP |' in (work / 'summary.md').read_text()
    # The detector and segmentor start from the classifier's backbone (the ImageNet stand-in).
    assert 'Pretrained with checkpoint=None' not in result.stdout + result.stderr
    pictures = [line.strip() for line in result.stdout.splitlines() if line.endswith('.png')]
    assert len(pictures) == 10 and all(osp.getsize(p) > 1000 for p in pictures)
    partitions = np.asarray(Image.open(work / 'vis' / 'partitions.png'))
    # One row under the title: the image and the four stages' panels (their labels are
    # tested in tests/test_analysis_tools.py).
    assert partitions.shape[1] > 3 * partitions.shape[0]


def test_synthetic_data_is_deterministic(tmp_path):
    make_demo_datasets(str(tmp_path / 'a'), seed=0, scale=0.02)
    make_demo_datasets(str(tmp_path / 'b'), seed=0, scale=0.02)
    for rel in ('coco/annotations/instances_train.json', 'cls/meta/train.txt'):
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' / rel).read_bytes()
    a = np.asarray(Image.open(tmp_path / 'a/ade/annotations/training/training_00000.png'))
    b = np.asarray(Image.open(tmp_path / 'b/ade/annotations/training/training_00000.png'))
    assert np.array_equal(a, b) and set(np.unique(a)) <= {1, 2, 3, 4, 5} and len(np.unique(a)) > 1
    coco = json.loads((tmp_path / 'a/coco/annotations/instances_train.json').read_text())
    assert coco['annotations'] and all(len(a['segmentation'][0]) >= 6 for a in coco['annotations'])
    assert {c['name'] for c in coco['categories']} == {'disc', 'square', 'triangle', 'cross'}


def test_demo_runs_are_seeded():
    # make demo seeds every task's run (weights, the LSH hyperplanes, sampling, augmentation).
    from tests.utils import load_script
    demo = load_script('tools/run_demo.py')
    for argv, seed in (([], 0), (['--seed', '3'], 3)):
        args = demo.parse_args(argv)
        for task in demo.TASKS:
            assert demo.demo_config(task, args, None).randomness == dict(seed=seed)
