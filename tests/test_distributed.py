"""Distributed equivalence: N gloo processes with the batch split == 1 process.

Two CPU processes, each with half of the batch, the model wrapped in DistributedDataParallel
and its BatchNorm layers converted to ``CPUSyncBN``, must give the gradients that one process
computes on the whole batch. The same run with plain per-process BatchNorm must not (it
normalises each half with its own statistics), which shows the comparison can fail.
"""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.config import Config

import dualformer_mm  # noqa: F401
from dualformer_mm import CPUSyncBatchNorm
from tests.utils import TINY_ARCH

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
BATCH, SIZE, WORLD = 4, 96, 2


def build_classifier() -> torch.nn.Module:
    """The ImageNet classifier of the repository's config, without randomness, with one block
    per stage: the kinds of BatchNorm layers of DualFormer-T, fewer of each."""
    import mmpretrain.models  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(osp.join(ROOT, 'configs/mmpretrain/dualformer_t_in1k.py'))
    cfg.model.backbone.arch = TINY_ARCH
    cfg.model.head.in_channels = TINY_ARCH['channels'][-1]
    cfg.model.backbone.drop_path_rate = 0.  # stochastic depth draws differ per process
    cfg.model.train_cfg = None  # so do mixup and cutmix
    cfg.model.head.num_classes = 10
    return MODELS.build(cfg.model)


def batch():
    """Images and data samples of the global batch, the same in every process."""
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
    labels = torch.randint(0, 10, (BATCH, ), generator=gen)
    return images, [DataSample().set_gt_label(int(label)) for label in labels]


def gradients(model: torch.nn.Module, images, samples) -> dict:
    """Parameter gradients of the classifier's loss on ``images``."""
    model.zero_grad()
    losses = model(images, samples, mode='loss')
    sum(losses.values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, store: str, state_file: str, out_file: str) -> None:
    """One of the two processes: half of the batch, DDP, with and without CPUSyncBN."""
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        images, samples = batch()
        share = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        for synced in (True, False):
            model = build_classifier()
            model.load_state_dict(torch.load(state_file))
            model.train()
            if synced:
                model = CPUSyncBatchNorm.convert(model)
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=None)
            # DDP all-reduces (averages) the gradients during backward.
            results[synced] = gradients(ddp, images[share], samples[share])
            if synced:
                results['running'] = {n: b.clone() for n, b in model.named_buffers()
                                      if n.endswith(('running_mean', 'running_var'))}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def _compare(reference: dict, other: dict) -> float:
    """Largest gradient difference, relative to the largest reference gradient."""
    scale = max(g.abs().max().item() for g in reference.values())
    assert reference.keys() == {k.removeprefix('module.') for k in other}
    other = {k.removeprefix('module.'): v for k, v in other.items()}
    return max((other[k] - g).abs().max().item() for k, g in reference.items()) / scale


@pytest.mark.xdist_group('processes')
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_gloo_processes_give_the_gradients_of_one(tmp_path):
    torch.manual_seed(0)
    model = build_classifier()
    state_file = str(tmp_path / 'init.pth')
    torch.save(model.state_dict(), state_file)
    model.train()
    images, samples = batch()
    reference = gradients(model, images, samples)

    out_file = str(tmp_path / 'grads.pth')
    # The two processes start from a fresh interpreter: what earlier tests left in this one
    # (the suite runs many in-process) must not reach them.
    subprocess.run([sys.executable, '-m', 'tests.test_distributed', str(tmp_path / 'store'),
                    state_file, out_file], cwd=ROOT, check=True, timeout=480)
    results = torch.load(out_file)
    synced, unsynced = _compare(reference, results[True]), _compare(reference, results[False])
    print(f'relative gradient difference: CPUSyncBN {synced:.2e}, per-process BN {unsynced:.2e}')
    # fp32 summation order differs between the runs; 1e-4 of the largest gradient is far
    # below what per-process statistics change.
    assert synced < 1e-4, f'CPUSyncBN gradients differ by {synced:.2e}'
    assert unsynced > 1e-2, f'per-process BN gradients unexpectedly match ({unsynced:.2e})'
    # The running statistics are those of the whole batch too (unbiased variance).
    buffers = dict(model.named_buffers())
    for name, value in results['running'].items():
        torch.testing.assert_close(value, buffers[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_sync_bn_is_batchnorm_in_one_process():
    bn = torch.nn.BatchNorm2d(6, momentum=None)
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    synced = CPUSyncBatchNorm.convert(torch.nn.Sequential(bn))[0]
    assert isinstance(synced, CPUSyncBatchNorm) and synced.weight is bn.weight
    x = torch.randn(3, 6, 5, 7)
    reference = torch.nn.BatchNorm2d(6, momentum=None)
    reference.load_state_dict(bn.state_dict())
    torch.testing.assert_close(synced(x), reference(x))
    torch.testing.assert_close(synced.running_var, reference.running_var)
    synced.eval(), reference.eval()
    torch.testing.assert_close(synced(x), reference(x))
    with pytest.raises(ValueError, match='expects \\(N, C, ...\\) input'):
        synced(torch.randn(6))


if __name__ == '__main__':
    # python -m tests.test_distributed STORE STATE_FILE OUT_FILE: the two gloo processes.
    mp.spawn(worker, args=tuple(sys.argv[1:4]), nprocs=WORLD, join=True)
