# Copyright (c) dualformer-mm contributors.
"""Partition ops of MHPA (paper section 3.2).

Each op ``foo`` has a pure-PyTorch reference ``foo_pytorch`` (in ``dualformer_mm/ops/partition.py``), the test
oracle and the fallback; ``foo`` itself runs the fused C++/CUDA kernel of
``dualformer_mm._ext`` or the reference according to ``DUALFORMER_OPS``
(``auto``/``ext``/``reference``, see ``dualformer_mm/ops/_backend.py`` and ``docs/ops.md``); ``auto`` runs the
CPU kernels and, until the CUDA kernels have passed on a GPU, the reference on CUDA tensors.
Importing this package never imports the extension, so it needs no build: the extension is
imported when a module that calls the ops is built (``PartitionAttention`` calls
:func:`prepare_backend`) unless the backend is ``reference``, and by an op called outside
such a module on its first call.

``partition_count`` and ``kmeans_assign`` have no fused kernel: the count is a single native
``index_add`` (and the fused ``partition_mean`` returns it anyway), and K-Means is not on the
default (LSH) path.
"""
from ._backend import (extension_available, get_backend, load_extension, prepare_backend,
                       set_backend, use_backend)
from ._flops import FLOP_HANDLES, register_flop_handles
from .lsh_hash import lsh_hash
from .partition import (kmeans_assign_pytorch, lsh_hash_pytorch, partition_count_pytorch,
                        partition_distribute_pytorch, partition_mean_pytorch,
                        partition_softmax_pool_pytorch, partition_softmax_pytorch)
from .partition_distribute import partition_distribute
from .partition_mean import partition_mean
from .partition_softmax import partition_softmax
from .partition_softmax_pool import partition_softmax_pool

partition_count = partition_count_pytorch
kmeans_assign = kmeans_assign_pytorch

register_flop_handles()

__all__ = [
    'lsh_hash', 'partition_count', 'partition_mean', 'partition_softmax_pool',
    'partition_softmax', 'partition_distribute', 'kmeans_assign', 'lsh_hash_pytorch',
    'partition_count_pytorch', 'partition_mean_pytorch', 'partition_softmax_pool_pytorch',
    'partition_softmax_pytorch', 'partition_distribute_pytorch', 'kmeans_assign_pytorch', 'get_backend', 'set_backend', 'use_backend', 'load_extension',
    'prepare_backend', 'extension_available', 'FLOP_HANDLES', 'register_flop_handles'
]
