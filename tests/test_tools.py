"""The tools on tiny data in the real formats: distributed training over gloo with 2 CPU
processes (detection, segmentation, and classification as two simulated machines), dist test,
the processes' teardown, the classifier-to-backbone converter, the demos and the toolboxes'
inferencers.

Each dataset is a few 64-96 px images the test writes itself; the configs are the real ones,
inherited by a small override file that points them at the data and shrinks the images. The
runs of the tools through their launchers are marked ``slow``. Resuming a run is tested in
tests/test_reliability.py, the gradients of two gloo processes in tests/test_distributed.py.
"""
import doctest
import importlib.util
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dualformer_mm  # noqa: F401  (allow-lists mmengine checkpoint types for torch.load)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable
GLOO_LINE = "distributed backend 'nccl' replaced by 'gloo', 2 CPU processes"


def _image(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def make_imagenet(root: Path, num: int = 4, size: int = 64) -> Path:
    """ImageNet layout: train/<wnid>/*.JPEG, val/*.JPEG and meta/{train,val}.txt."""
    rng = np.random.default_rng(0)
    (root / 'meta').mkdir(parents=True)
    lines = {'train': [], 'val': []}
    for i in range(num):
        wnid = f'n0000000{i}'
        (root / 'train' / wnid).mkdir(parents=True)
        name = f'{wnid}/{wnid}_{i}.JPEG'
        _image(rng, size).save(root / 'train' / name, format='JPEG')
        lines['train'].append(f'{name} {i}')
        (root / 'val').mkdir(exist_ok=True)
        vname = f'ILSVRC2012_val_{i:08d}.JPEG'
        _image(rng, size).save(root / 'val' / vname, format='JPEG')
        lines['val'].append(f'{vname} {i}')
    for split, rows in lines.items():
        (root / 'meta' / f'{split}.txt').write_text('\n'.join(rows) + '\n')
    return root


def make_coco(root: Path, num: int = 4, size: int = 96) -> Path:
    """COCO layout: {train,val}2017/*.jpg and annotations/instances_{split}.json (polygons)."""
    rng = np.random.default_rng(0)
    (root / 'annotations').mkdir(parents=True)
    categories = [{'id': cid, 'name': name} for cid, name in ((1, 'person'), (2, 'bicycle'))]
    for split in ('train2017', 'val2017'):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(num):
            name = f'{i:012d}.jpg'
            _image(rng, size).save(root / split / name)
            images.append({'id': i + 1, 'file_name': name, 'width': size, 'height': size})
            for j in range(2):
                x, y = (int(v) for v in rng.integers(0, size // 2, 2))
                w, h = (int(v) for v in rng.integers(12, size // 2, 2))
                annotations.append({
                    'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': j + 1,
                    'bbox': [x, y, w, h], 'area': float(w * h), 'iscrowd': 0,
                    'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        ann = {'images': images, 'annotations': annotations, 'categories': categories}
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(ann))
    return root


def make_ade20k(root: Path, num: int = 4, size: int = 64) -> Path:
    """ADEChallengeData2016 layout: images/{training,validation}/*.jpg, annotations/*.png."""
    rng = np.random.default_rng(0)
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        for i in range(num):
            stem = f'ADE_{split[:5]}_{i:08d}'
            _image(rng, size).save(root / 'images' / split / f'{stem}.jpg')
            label = np.zeros((size, size), np.uint8)  # 0 = "other", ignored by reduce_zero_label
            label[:size // 2] = 1 + i % 150
            label[size // 2:, :size // 2] = 1 + (i + 7) % 150
            Image.fromarray(label).save(root / 'annotations' / split / f'{stem}.png')
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _run(args, timeout=400, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHON=PYTHON, PORT=str(_free_port()), **env)
    result = subprocess.run(args, cwd=ROOT, env=environ, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return result


def _override(tmp: Path, name: str, base: str, body: str) -> str:
    path = tmp / f'{name}.py'
    path.write_text(f"_base_ = '{osp.join(ROOT, base)}'\n" + body)
    return str(path)


CLS_BODY = '''
data_root = '{root}'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=72, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=1))
'''

DET_BODY = '''
data_root = '{root}/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
model = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                            rcnn=dict(sampler=dict(num=64))),
             test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
'''

SEG_BODY = '''
data_root = '{root}'
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
model = dict(data_preprocessor=dict(size=crop_size))
# 2 images per process: the PPM's 1x1 pooled map needs more than one value per channel for BN.
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
'''


# Saves each rank's parameters before and after training, and where it ran (the Runner writes
# checkpoints from rank 0 only).
RANK_HOOK = '''
import json, os
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeights(Hook):
    """Write this rank's parameters before and after training, and where it ran."""

    def __init__(self, out):
        self.out = out

    def _save(self, runner, tag):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rank = int(os.environ['RANK'])
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
                   os.path.join(self.out, f'{tag}_rank{rank}.pth'))
        with open(os.path.join(self.out, f'{tag}_rank{rank}.json'), 'w') as f:
            json.dump({k: os.environ.get(k) for k in
                       ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'GROUP_RANK')}
                      | dict(iter=runner.iter), f)

    def before_train(self, runner):
        self._save(runner, 'init')

    def after_train(self, runner):
        self._save(runner, 'final')
'''

TWO_NODES_BODY = '''
custom_imports = dict(imports=['dualformer_mm', 'rank_hooks'], allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook'), dict(type='SaveRankWeights', out='{out}')]
'''


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
def test_two_nodes_train_to_the_same_weights(tmp_path):
    """Several machines, as docs/usage.md starts them, simulated on one: ``NNODES=2`` with
    ``NODE_RANK=0`` and ``NODE_RANK=1``, one process per "node" (``tools/dist_train.sh CONFIG
    1`` twice, in parallel, on one free port), train the classifier one epoch over gloo; both
    ranks end with the same weights, and rank 0 writes the checkpoint.

    BatchNorm's running statistics are buffers each rank keeps from its own half of the batch
    (the config's plain BN), so only parameters are compared.
    """
    root = make_imagenet(tmp_path / 'imagenet')
    (tmp_path / 'rank_hooks.py').write_text(RANK_HOOK)
    out = tmp_path / 'weights'
    out.mkdir()
    cfg = _override(tmp_path, 'cls', 'configs/mmpretrain/dualformer_t_in1k.py',
                    CLS_BODY.format(root=root, epochs=1) + TWO_NODES_BODY.format(out=out))
    port = str(_free_port())
    procs = []
    for node_rank in (0, 1):
        env = dict(os.environ, PYTHON=PYTHON, NNODES='2', NODE_RANK=str(node_rank),
                   MASTER_ADDR='127.0.0.1', PORT=port, OMP_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
        log = open(tmp_path / f'node{node_rank}.log', 'w')
        procs.append((subprocess.Popen(
            ['bash', 'tools/dist_train.sh', cfg, '1', '--work-dir',
             str(tmp_path / f'work{node_rank}')], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        try:
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f'node{r}.log').read_text() for r in (0, 1)]
    for (proc, _), text in zip(procs, logs):
        assert proc.returncode == 0, text[-4000:]
    # Rank 0 logs for the run: two processes over gloo, the epoch's one iteration (4 images,
    # 2 per rank).
    assert GLOO_LINE in logs[0] and 'Epoch(train) [1][1/1]' in logs[0]
    where = [json.loads((out / f'final_rank{r}.json').read_text()) for r in (0, 1)]
    assert [(w['RANK'], w['GROUP_RANK'], w['WORLD_SIZE'], w['iter']) for w in where] == [
        ('0', '0', '2', 1), ('1', '1', '2', 1)]
    init = [torch.load(out / f'init_rank{r}.pth', weights_only=True) for r in (0, 1)]
    final = [torch.load(out / f'final_rank{r}.pth', weights_only=True) for r in (0, 1)]
    assert list(final[0]) == list(final[1]) and len(final[0]) > 100
    for name in final[0]:
        assert torch.equal(init[0][name], init[1][name]), f'{name} differs before training'
        assert torch.equal(final[0][name], final[1][name]), f'{name} differs between ranks'
    # Training moved the weights, so the equality above is not that of two untouched models.
    changed = [n for n in final[0] if not torch.equal(final[0][n], init[0][n])]
    assert len(changed) > len(final[0]) // 2
    checkpoint = torch.load(tmp_path / 'work0' / 'epoch_1.pth', map_location='cpu',
                            weights_only=True)
    assert checkpoint['meta']['epoch'] == 1
    for name, value in final[0].items():
        assert torch.equal(checkpoint['state_dict'][name], value), name
    assert not (tmp_path / 'work1' / 'epoch_1.pth').exists()


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    """ImageNet-layout data and a checkpoint of the DualFormer-T classifier of the config, as
    the Runner saves one (``meta`` and ``state_dict``), with weights no init gives."""
    from mmengine.config import Config
    from dualformer_mm.utils import build_model_from_cfg
    tmp = tmp_path_factory.mktemp('classifier')
    root = make_imagenet(tmp / 'imagenet')
    model = build_model_from_cfg(Config.fromfile(
        osp.join(ROOT, 'configs/mmpretrain/dualformer_t_in1k.py')))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    torch.save(dict(meta=dict(epoch=1, iter=1), state_dict=model.state_dict()),
               tmp / 'classifier.pth')
    return tmp, root, tmp / 'classifier.pth'


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
def test_dist_test_cls(classifier, tmp_path):
    _, root, checkpoint = classifier
    cfg = _override(tmp_path, 'cls_test', 'configs/mmpretrain/dualformer_t_in1k.py',
                    CLS_BODY.format(root=root, epochs=1))
    out = tmp_path / 'preds.pkl'
    result = _run(['bash', 'tools/dist_test.sh', cfg, str(checkpoint), '2',
                   '--work-dir', str(tmp_path / 'test'), '--out', str(out)])
    log = result.stdout + result.stderr
    assert GLOO_LINE in log and 'accuracy/top1' in log
    # Both ranks' predictions, gathered: one per validation image.
    import pickle
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4


def test_converter_reports_and_loads(classifier, tmp_path, monkeypatch, capsys):
    _, _, checkpoint = classifier
    converter = _load_tool('tools/model_converters/dualformer_cls_to_backbone.py')
    dst = tmp_path / 'backbone.pth'
    monkeypatch.setattr(sys, 'argv', ['convert', str(checkpoint), str(dst), '--arch', 't'])
    assert converter.main() == 0
    out = capsys.readouterr().out
    assert 'dropped keys (2)' in out and 'head.fc.weight' in out
    # The classifier has only the last stage's output norm: norm0-2 start fresh.
    assert 'missing keys (15)' in out and 'norm0.weight' in out
    assert 'unexpected keys (0)' in out and 'mismatched keys (0)' in out
    # The configs' init_cfg loads it (weights_only) into the detector's backbone: every
    # tensor of the classifier's backbone arrives.
    from mmengine.config import Config
    from dualformer_mm.utils import build_model_from_cfg
    cfg = Config.fromfile(osp.join(ROOT, 'configs/mmdet/mask_rcnn_dualformer_t_1x.py'))
    cfg.model.backbone.init_cfg.checkpoint = str(dst)
    model = build_model_from_cfg(cfg)
    model.init_weights()
    source = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    loaded = model.backbone.state_dict()
    copied = [k for k in source if k.startswith('backbone.')]
    assert len(copied) > 100
    for key in copied:
        torch.testing.assert_close(loaded[key[len('backbone.'):]], source[key], msg=key)
    # A wrong size is refused with the mismatches listed, and nothing is written.
    monkeypatch.setattr(sys, 'argv', ['convert', str(checkpoint), str(tmp_path / 'bad.pth'),
                                      '--arch', 's'])
    assert converter.main() == 1
    assert 'does not fit DualFormer-s' in capsys.readouterr().err
    assert not (tmp_path / 'bad.pth').exists()


# Runs tools/train.py or tools/test.py in-process as rank 0 of a one-process gloo group and
# counts this process's threads before and after main(). KeepRunner (the control) holds the
# Runner past the run, as the old tools did until interpreter exit.
TEARDOWN_SCRIPT = """
import importlib.util, os, sys
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

KEPT = []

@HOOKS.register_module()
class KeepRunner(Hook):
    def after_run(self, runner):
        KEPT.append(runner)

def threads():
    return len(os.listdir('/proc/self/task'))

root, name = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(name, os.path.join(root, 'tools', name + '.py'))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
sys.argv = [name + '.py'] + sys.argv[3:]
before = threads()
tool.main()
print('threads', before, threads(), torch.distributed.is_initialized())
"""


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='counts threads in /proc')
@pytest.mark.parametrize('tool,keep', [('train', False), ('test', False), ('test', True)],
                         ids=['train', 'test', 'test-runner-kept'])
def test_tools_join_gloo_threads_before_exit(classifier, tool, keep, tmp_path):
    """The tools free the process group, so no gloo thread is left when Python finalises.

    A gloo worker still alive then can abort a finished run with SIGABRT ("terminate called
    without an active exception"): 3 of 69 two-process training runs on a loaded 2-core
    machine before the fix. The control keeps a reference to the Runner, which keeps the
    process group and its threads alive, as the tools did before.
    """
    _, root, checkpoint = classifier
    body = CLS_BODY.format(root=root, epochs=1)
    if keep:
        body += "custom_hooks = [dict(type='KeepRunner')]\n"
    cfg = _override(tmp_path, 'cls', 'configs/mmpretrain/dualformer_t_in1k.py', body)
    args = [cfg] if tool == 'train' else [cfg, str(checkpoint)]
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1')
    result = subprocess.run([PYTHON, '-c', TEARDOWN_SCRIPT, ROOT, tool, *args, '--launcher',
                             'pytorch', '--work-dir', str(tmp_path / 'work')],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    before, after, initialized = result.stdout.strip().splitlines()[-1].split()[1:]
    assert initialized == 'False'
    if keep:
        assert int(after) > int(before), 'the control should leave the gloo threads alive'
    else:
        assert after == before, f'{int(after) - int(before)} thread(s) left after main()'


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
def test_dist_train_det(tmp_path):
    root = make_coco(tmp_path / 'coco')
    cfg = _override(tmp_path, 'det', 'configs/mmdet/mask_rcnn_dualformer_t_1x.py',
                    DET_BODY.format(root=root))
    result = _run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', str(tmp_path / 'w')])
    log = result.stdout + result.stderr
    assert GLOO_LINE in log and "SyncBN norm config(s) in the model became 'CPUSyncBN'" in log
    assert 'Pretrained with checkpoint=None' in log
    # Validation runs CocoMetric (random weights keep no detection, hence no AP to print).
    assert 'Epoch(train) [1][2/2]' in log and 'Epoch(val) [1][2/2]' in log
    assert (tmp_path / 'w' / 'epoch_1.pth').exists()


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
def test_dist_train_seg(tmp_path):
    root = make_ade20k(tmp_path / 'ade')
    cfg = _override(tmp_path, 'seg', 'configs/mmseg/upernet_dualformer_t_ade20k.py',
                    SEG_BODY.format(root=root))
    result = _run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', str(tmp_path / 'w')])
    log = result.stdout + result.stderr
    assert GLOO_LINE in log and 'Iter(train) [2/2]' in log and 'mIoU' in log
    assert (tmp_path / 'w' / 'iter_2.pth').exists()


def _load_tool(relpath: str):
    spec = importlib.util.spec_from_file_location(osp.basename(relpath)[:-3],
                                                  osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('task,config', [
    ('cls', 'configs/mmpretrain/dualformer_t_in1k.py'),
    ('det', 'configs/mmdet/mask_rcnn_dualformer_t_1x.py'),
    ('seg', 'configs/mmseg/upernet_dualformer_t_ade20k.py'),
])
def test_demo_writes_png(task, config, tmp_path, monkeypatch, capsys):
    img = tmp_path / 'img.jpg'
    _image(np.random.default_rng(1), 96).save(img)
    out = tmp_path / f'{task}.png'
    args = [str(img), osp.join(ROOT, config), '--out-file', str(out), '--device', 'cpu']
    if task == 'det':
        # With a checkpoint: a state dict of a freshly built detector.
        from mmengine.config import Config
        from dualformer_mm.utils import build_model_from_cfg
        cfg = Config.fromfile(osp.join(ROOT, config))
        cfg.model.backbone.pop('init_cfg')
        model = build_model_from_cfg(cfg)
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'dataset_meta': {'classes': ('a', ) * 80}}}, tmp_path / 'det.pth')
        args += ['--checkpoint', str(tmp_path / 'det.pth')]
    monkeypatch.setattr(sys, 'argv', [f'image_demo_{task}.py'] + args)
    _load_tool(f'tools/demo/image_demo_{task}.py').main()
    assert f'saved {out}' in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == 'PNG' and png.size == (96, 96)


def test_mmseg_inferencer(tmp_path):
    from mmseg.apis import MMSegInferencer
    img = tmp_path / 'img.jpg'
    _image(np.random.default_rng(2), 64).save(img)
    inferencer = MMSegInferencer(
        model=osp.join(ROOT, 'configs/mmseg/upernet_dualformer_t_ade20k.py'), device='cpu')
    result = inferencer(str(img), return_vis=True)
    assert result['predictions'].shape == (64, 64)
    assert np.asarray(result['visualization']).reshape(-1, 64, 64, 3).shape[0] == 1


def test_get_flops_detector_and_segmentor():
    from dualformer_mm.utils import build_model_from_cfg, count_complexity
    det = build_model_from_cfg(osp.join(ROOT, 'configs/mmdet/mask_rcnn_dualformer_t_1x.py'))
    seg = build_model_from_cfg(osp.join(ROOT, 'configs/mmseg/upernet_dualformer_t_ade20k.py'))
    _, backbone_flops = count_complexity(det.backbone, (128, 128))
    det_params, det_flops = count_complexity(det, (128, 128))
    seg_params, seg_flops = count_complexity(seg, (128, 128))
    # Neck and heads add to the backbone's cost; 25 M parameters as in Table 3.
    assert det_flops > 2 * backbone_flops and seg_flops > 2 * backbone_flops
    assert det_params / 1e6 == pytest.approx(25, rel=0.05)


# --- what the tools share lives in the package, out of `import dualformer_mm`'s way -----------

TOOL_MODULES = ('dualformer_mm.deployment', 'dualformer_mm.benchmark', 'dualformer_mm.analysis',
                'dualformer_mm.utils.runner')
HEAVY = ('onnx', 'onnxruntime', 'mmdet', 'mmseg', 'mmpretrain', 'timm')


def _fresh_modules(code: str) -> set:
    """The modules ``sys.modules`` holds after ``code``, in a new interpreter."""
    result = subprocess.run([PYTHON, '-c', f'{code}\nimport sys; print(sorted(sys.modules))'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(eval(result.stdout.strip().splitlines()[-1]))


def test_package_import_leaves_the_tools_modules_and_toolboxes_out():
    loaded = _fresh_modules('import dualformer_mm')
    assert 'dualformer_mm.models' in loaded  # the control: the package itself is there
    tools = sorted(m for m in loaded if m.startswith(TOOL_MODULES))
    assert not tools, tools
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_tools_modules_import_without_onnx_or_the_toolboxes():
    # What every script imports at its top; onnx only in deployment.tensorrt, the toolboxes
    # only when a function needs them.
    code = '\n'.join(f'import {m}' for m in (
        'dualformer_mm.deployment', 'dualformer_mm.deployment.onnx_export',
        'dualformer_mm.deployment.targets', 'dualformer_mm.utils.runner',
        'dualformer_mm.analysis.ablation.runner', 'dualformer_mm.analysis.ablation.report',
        *(f'dualformer_mm.benchmark.{name}' for name in (
            'detectors', 'errors', 'measure', 'options', 'output', 'ratios', 'timm_features',
            'train_report', 'training', 'zoo'))))
    loaded = _fresh_modules(code)
    assert 'dualformer_mm.benchmark.zoo' in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_runner_and_environment_docstring_examples():
    from dualformer_mm.utils import environment, runner
    for module in (environment, runner):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
