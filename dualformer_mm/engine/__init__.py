from .hooks import RandomStateHook
from .loops import (SeededEpochBasedTrainLoop, SeededIterBasedTrainLoop,
                    build_seeded_dataloader, per_sample_seeded)
from .optim import LayerDecayOptimWrapperConstructor
from .sample_seeding import (PerSampleSeedDataset, PerSampleSeedSampler, SeededIndex,
                             sample_random_streams)

__all__ = [
    'RandomStateHook', 'SeededEpochBasedTrainLoop', 'SeededIterBasedTrainLoop',
    'build_seeded_dataloader', 'per_sample_seeded', 'PerSampleSeedDataset',
    'PerSampleSeedSampler', 'SeededIndex', 'sample_random_streams',
    'LayerDecayOptimWrapperConstructor'
]
