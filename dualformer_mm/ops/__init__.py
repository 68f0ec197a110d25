# Copyright (c) dualformer-mm contributors.
"""Partition ops of MHPA (paper section 3.2).

Each op ``foo`` has a pure-PyTorch reference ``foo_pytorch``; the names without the suffix are
what the model calls. Today they are the reference implementations; the compiled kernels of
the ops issue plug in behind the same names.
"""
from .partition import (kmeans_assign_pytorch, lsh_hash_pytorch, partition_count_pytorch,
                        partition_distribute_pytorch, partition_mean_pytorch,
                        partition_softmax_pool_pytorch)

lsh_hash = lsh_hash_pytorch
partition_count = partition_count_pytorch
partition_mean = partition_mean_pytorch
partition_softmax_pool = partition_softmax_pool_pytorch
partition_distribute = partition_distribute_pytorch
kmeans_assign = kmeans_assign_pytorch

__all__ = [
    'lsh_hash', 'partition_count', 'partition_mean', 'partition_softmax_pool',
    'partition_distribute', 'kmeans_assign', 'lsh_hash_pytorch', 'partition_count_pytorch',
    'partition_mean_pytorch', 'partition_softmax_pool_pytorch', 'partition_distribute_pytorch',
    'kmeans_assign_pytorch'
]
