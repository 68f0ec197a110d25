"""Resume is exact with data loader workers: every sample's augmentation has its own streams.

The dataset below draws from Python's ``random``, numpy's global generator and torch's, as
OpenMMLab transforms do. An "interrupted" run is a new DataLoader (new workers) that starts at
the epoch the first one stopped before, as a resumed run's is.
"""
import hashlib
import os.path as osp
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from torch.utils.data import Dataset

from dualformer_mm.engine import (PerSampleSeedDataset, RandomStateHook, SeededIndex,
                                  build_seeded_dataloader, per_sample_seeded,
                                  sample_random_streams)

from .test_pipelines import _config, _dataset
from .test_tools import make_ade20k, make_coco, make_imagenet
from .utils import training_configs

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class Augmented(Dataset):
    """Eight samples, each "augmented" by one draw from each of the three generators."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), random.random(), np.random.rand(),
                             torch.rand(()).item()], dtype=torch.float64)

    def get_data_info(self, index: int) -> dict:
        # For mmdet's AspectRatioBatchSampler: four landscape and four portrait images.
        return dict(width=2, height=1) if index % 2 else dict(width=1, height=2)


def loader(num_workers: int, seeded: bool, sampler=None, batch_sampler=None):
    """A training dataloader as the Seeded*TrainLoop loops (or, unseeded, mmengine's) build it."""
    cfg = dict(batch_size=3, num_workers=num_workers, persistent_workers=num_workers > 0,
               dataset=Augmented(), collate_fn=dict(type='default_collate'),
               sampler=sampler or dict(type='DefaultSampler', shuffle=True))
    if batch_sampler:
        cfg['batch_sampler'] = batch_sampler
    return build_seeded_dataloader(cfg, seed=0) if seeded else Runner.build_dataloader(cfg, 0)


def run_epochs(loader, epochs) -> dict:
    """The batches of each epoch, with the epoch set as mmengine's DistSamplerSeedHook sets it."""
    out = {}
    for epoch in epochs:
        sampler = loader.batch_sampler.sampler
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        out[epoch] = [batch.clone() for batch in loader]
    return out


def interrupted_and_uninterrupted(*args, epochs: int = 4, stop: int = 2, **kwargs):
    """Batches of an uninterrupted run and of one stopped before ``stop`` and started again."""
    full = run_epochs(loader(*args, **kwargs), range(epochs))
    first = run_epochs(loader(*args, **kwargs), range(stop))
    resumed = run_epochs(loader(*args, **kwargs), range(stop, epochs))
    return full, {**first, **resumed}


def same(a: dict, b: dict, epoch: int) -> bool:
    return len(a[epoch]) == len(b[epoch]) and all(
        torch.equal(x, y) for x, y in zip(a[epoch], b[epoch]))


def test_sample_random_streams_repeat_per_key_and_restore_the_caller():
    def draws():
        return random.random(), np.random.rand(), torch.rand(()).item()

    with sample_random_streams((0, 0, 1, 5)):
        a = draws()
    with sample_random_streams((0, 0, 1, 5)):
        b = draws()
    with sample_random_streams((0, 0, 2, 5)):  # the next epoch, same position
        c = draws()
    assert a == b
    assert all(x != y for x, y in zip(a, c))

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = draws()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with sample_random_streams((3, )):
        draws()
    assert draws() == expected


def test_seeded_index_survives_a_pickle():
    import pickle
    index = pickle.loads(pickle.dumps(SeededIndex(5, (0, 1, 2, 3))))
    assert isinstance(index, SeededIndex) and index == 5 and index.key == (0, 1, 2, 3)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resumed_epochs_load_the_same_batches(num_workers):
    full, interrupted = interrupted_and_uninterrupted(num_workers, seeded=True)
    for epoch in full:
        assert same(full, interrupted, epoch), epoch
    # Every sample's augmentation changes from epoch to epoch (compared by sample index).
    by_sample = {e: {int(r[0]): r[1:] for b in full[e] for r in b} for e in full}
    assert all(not torch.equal(by_sample[0][i], by_sample[1][i]) for i in range(8))


def test_control_persistent_workers_without_per_sample_streams_diverge():
    """mmengine's worker seeding alone: a resumed run's workers start their streams again."""
    full, interrupted = interrupted_and_uninterrupted(2, seeded=False)
    assert same(full, interrupted, 0) and same(full, interrupted, 1)
    assert not same(full, interrupted, 2) and not same(full, interrupted, 3)


def test_batches_do_not_depend_on_the_number_of_workers():
    batches = [run_epochs(loader(n, seeded=True), [0, 1]) for n in (0, 1, 2)]
    for other in batches[1:]:
        assert same(batches[0], other, 0) and same(batches[0], other, 1)


def test_loading_in_the_main_process_leaves_its_streams_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run_epochs(loader(0, seeded=True), [0, 1])
    assert torch.equal(torch.rand(3), expected)


def test_mmdet_aspect_ratio_batch_sampler():
    """mmdet groups the tagged indices by aspect ratio; the tags and the batches survive."""
    pytest.importorskip('mmdet')
    from mmdet.datasets.samplers import AspectRatioBatchSampler
    full, interrupted = interrupted_and_uninterrupted(
        2, seeded=True, batch_sampler=dict(type=AspectRatioBatchSampler))
    for epoch in full:
        assert same(full, interrupted, epoch), epoch
    # Full batches are grouped: only even (portrait) or only odd (landscape) indices; the
    # leftovers of both groups make the last batch.
    assert [len({int(i) % 2 for i in batch[:, 0]}) for batch in full[0]] == [1, 1, 2]


@pytest.mark.parametrize('seeded', [True, False])
def test_infinite_sampler_resume_skips_batches_like_mmengine(seeded):
    """IterBasedTrainLoop resumes by loading and dropping the batches already trained on.

    With ``num_workers=0`` those batches are loaded in the main process, after
    ``RandomStateHook`` restored its streams: without per-sample streams the replay draws
    from them a second time (the control), with them it leaves them alone.
    """
    sampler = dict(type='InfiniteSampler', shuffle=True)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    iterator = iter(loader(0, seeded, sampler=sampler))
    first = [next(iterator) for _ in range(3)]
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # checkpoint
    full = [next(iterator) for _ in range(3)]

    random.setstate(saved[0]), np.random.set_state(saved[1]), torch.set_rng_state(saved[2])
    iterator = iter(loader(0, seeded, sampler=sampler))
    skipped = [next(iterator) for _ in range(3)]
    resumed = [next(iterator) for _ in range(3)]
    if seeded:
        assert all(torch.equal(a, b) for a, b in zip(first + full, skipped + resumed))
    else:
        assert not all(torch.equal(a, b) for a, b in zip(full, resumed))


def test_plain_index_passes_through_unseeded():
    data = PerSampleSeedDataset(Augmented())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    wrapped = data[3]
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert torch.equal(wrapped, Augmented()[3])  # drawn from the process's own streams
    assert data.get_data_info(1) == dict(width=2, height=1)  # read through the wrapper
    with pytest.raises(AttributeError):
        data.no_such_attribute


def test_a_built_dataloader_must_already_be_seeded():
    with pytest.raises(TypeError, match='PerSampleSeedDataset'):
        per_sample_seeded(loader(0, seeded=False), seed=0)
    seeded = loader(0, seeded=True)
    assert per_sample_seeded(seeded, seed=0) is seeded


def test_validation_leaves_the_training_streams_alone():
    """Validation runs after the checkpoint, and a resumed run does not repeat it."""
    hook = RandomStateHook()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = torch.rand(2), np.random.rand(), random.random()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    hook.before_val(None)
    torch.rand(5), np.random.rand(5), random.random()  # what validation draws
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)  # a best checkpoint, saved while validating
    hook.after_val(None)
    got = torch.rand(2), np.random.rand(), random.random()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    torch.set_rng_state(checkpoint['meta']['random_state']['torch'])
    assert torch.equal(torch.rand(2), expected[0])


# The training pipelines of the configs, on generated data (tests/test_pipelines.py).
PIPELINES = {
    'imagenet': ('configs/mmpretrain/dualformer_t_in1k.py',
                 lambda tmp: f"{make_imagenet(tmp / 'imagenet', num=4, size=96)}"),
    'coco_1x': ('configs/mmdet/mask_rcnn_dualformer_t_1x.py',
                lambda tmp: f"{make_coco(tmp / 'coco', num=4, size=96)}/"),
    'coco_3x': ('configs/mmdet/mask_rcnn_dualformer_t_3x.py',
                lambda tmp: f"{make_coco(tmp / 'coco', num=4, size=96)}/"),
    'ade20k': ('configs/mmseg/upernet_dualformer_t_ade20k.py',
               lambda tmp: f"{make_ade20k(tmp / 'ade', num=4, size=64)}"),
}


@pytest.mark.parametrize('name', PIPELINES)
def test_config_pipelines_draw_only_from_the_seeded_streams(name, tmp_path):
    """Every transform of the configs' training pipelines draws from the three global
    generators: under a sample's key its output does not depend on the process's streams
    (a transform with a generator of its own would make it), and it changes with the key."""
    rel, make = PIPELINES[name]
    dataset = PerSampleSeedDataset(_dataset(_config(rel), make(tmp_path)))
    keys = [SeededIndex(p % len(dataset), (0, 0, 0, p)) for p in range(16)]

    def digests(process_seed: int) -> list:
        random.seed(process_seed), np.random.seed(process_seed), torch.manual_seed(process_seed)
        return [hashlib.sha256(dataset[key]['inputs'].numpy().tobytes()).hexdigest()
                for key in keys]

    first = digests(1)
    assert digests(2) == first
    assert len(set(first)) > len(dataset)  # the same image augmented differently per key


CONFIGS = training_configs()


@pytest.mark.parametrize('path', CONFIGS, ids=lambda path: osp.relpath(path, ROOT))
def test_configs_that_resume_exactly_seed_every_sample(path):
    """The model bases say a resumed run continues exactly: every config that inherits their
    RandomStateHook trains with one of the per-sample seeded loops."""
    cfg = Config.fromfile(path)
    assert 'RandomStateHook' in [hook['type'] for hook in cfg.custom_hooks]
    expected = 'SeededIterBasedTrainLoop' if 'max_iters' in cfg.train_cfg else \
        'SeededEpochBasedTrainLoop'
    assert cfg.train_cfg.type == expected
