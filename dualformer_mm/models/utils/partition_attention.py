# Copyright (c) dualformer-mm contributors.
"""Multi-Head Partition Attention (MHPA), section 3.2 of the paper.

``PartitionAttention`` is the global path of the Dual Attention Block. Per head it groups the
(downsampled) tokens into partitions (LSH by random hyperplanes, eqs. 4-5, or K-Means),
attends within each partition (intra-partition attention, eqs. 6-7) and across them
(inter-partition attention, eqs. 8-9), hands the partition features back to the tokens
(global-to-local aggregation) and undoes the downsampling (channel to spatial). The options
that switch between readings of the equations are the fields of
:class:`~dualformer_mm.models.AttentionConfig`. The partition operations are the ops of
``dualformer_mm.ops`` (a CPU and a CUDA kernel, and a pure-PyTorch reference each).
"""
import math
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from dualformer_mm import ops
from .mbconv import conv_norm_act
from .options import AttentionConfig


class PartitionAttention(BaseModule):
    """Multi-Head Partition Attention (MHPA), section 3.2.

    Depth-wise stride-``k`` downsampling, a partition generator per head (LSH by random
    hyperplanes, or K-Means), intra-partition attention (eqs. 6-7), inter-partition attention
    (mean partition descriptors weighted by SE-style importance normalised over partitions,
    eqs. 8-9), global-to-local aggregation (scatter back, concatenate, linear) and, when
    ``k > 1``, channel-to-spatial recovery (1x1 conv to ``C*k*k`` channels, pixel shuffle),
    with a skip connection. At ``k = 1`` nothing was downsampled and the aggregation's output
    is used as it is.

    The readings of the paper's equations are options of ``attn_cfg``
    (:class:`~dualformer_mm.models.AttentionConfig`); ``docs/architecture.md`` quotes the
    equations:

    * ``intra='pool'``: the softmax weights of eq. 6 pool each partition's transformed
      features into one proxy feature, which is scattered back to the partition's tokens
      with the inter-partition feature. ``intra='token'``: each token keeps its own
      transformed feature scaled by its softmax weight within its partition,
      ``x_i^intra = w_i * x~_i`` (eq. 7 per token); only the inter-partition feature is
      scattered back.
    * ``inter_importance='partition'``: ``m_k = sigmoid(MLP(g_k))`` from partition ``k``'s
      own descriptor. ``inter_importance='joint'``: ``m = sigmoid(MLP([g_1, ..., g_K]))``,
      every coefficient of a head from all of its ``K`` descriptors.

    Args:
        dims (int): Channels in and out.
        num_heads (int): Heads; each head partitions its own ``dims // num_heads`` channels.
        num_partitions (int): Partitions per head. A power of two for LSH. Defaults to 8.
        sr_ratio (int): Downsampling rate ``k`` of the depth-wise stride conv. Defaults to 1.
        attn_cfg (dict | AttentionConfig, optional): Options
            (:class:`~dualformer_mm.models.AttentionConfig`); None or missing keys take the
            defaults. Defaults to None.
        norm_cfg (dict): Norm after the downsampling conv. Defaults to ``dict(type='BN')``.
        init_cfg (dict, optional): Initialization config. Defaults to None.

    Example:
        >>> attn = PartitionAttention(dims=64, num_heads=2, num_partitions=8, sr_ratio=2)
        >>> attn(torch.rand(2, 64, 15, 17)).shape
        torch.Size([2, 64, 15, 17])
        >>> attn = PartitionAttention(32, 1, attn_cfg=dict(intra='token',
        ...                                                inter_importance='joint'))
        >>> attn(torch.rand(1, 32, 6, 6)).shape
        torch.Size([1, 32, 6, 6])
    """

    def __init__(self,
                 dims: int,
                 num_heads: int,
                 num_partitions: int = 8,
                 sr_ratio: int = 1,
                 attn_cfg: Union[None, Dict, AttentionConfig] = None,
                 norm_cfg: Dict = dict(type='BN'),
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = AttentionConfig.build(attn_cfg)
        if dims % num_heads != 0:
            raise ValueError(f'dims ({dims}) must be divisible by num_heads ({num_heads})')
        if cfg.partition == 'lsh' and (num_partitions < 2
                                       or num_partitions & (num_partitions - 1)):
            raise ValueError('num_partitions must be a power of two >= 2 for LSH, '
                             f'got {num_partitions}')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got {sr_ratio}')
        self.cfg = cfg
        self.dims = dims
        self.num_heads = num_heads
        self.head_dims = dims // num_heads
        self.num_partitions = num_partitions
        self.sr_ratio = sr_ratio

        if sr_ratio > 1:
            self.down = conv_norm_act(dims, dims, sr_ratio, stride=sr_ratio, groups=dims,
                                      norm_cfg=norm_cfg)
        else:
            self.down = nn.Identity()
        # The "lightweight linear layer" that gives the transformed features x~ (eq. 7).
        self.value = nn.Linear(dims, dims)
        if cfg.partition == 'lsh':
            # Planes are buffers, not parameters: saved in checkpoints, so a loaded model
            # reproduces its partitions, and never trained (eq. 4 uses pre-defined normals).
            bits = int(math.log2(num_partitions))
            self.register_buffer('planes', torch.randn(num_heads, self.head_dims, bits))
        if cfg.use_inter:
            # SE-style importance coefficients of the partitions (eq. 9), shared by the heads.
            # Both readings have the same bottleneck; they differ in what the first layer sees
            # (one descriptor, or the K of a head) and what the last predicts (1, or K).
            hidden = max(self.head_dims // 4, 8)
            if cfg.inter_importance == 'partition':
                self.importance = nn.Sequential(
                    nn.Linear(self.head_dims, hidden), nn.GELU(), nn.Linear(hidden, 1))
            else:
                self.importance = nn.Sequential(
                    nn.Linear(num_partitions * self.head_dims, hidden), nn.GELU(),
                    nn.Linear(hidden, num_partitions))
        num_paths = int(cfg.use_intra) + int(cfg.use_inter)
        self.aggregate = nn.Linear(num_paths * dims, dims)
        # Channel to spatial undoes the downsampling; at k = 1 there is none to undo, and a
        # 1x1 conv there would be a third linear map between `aggregate` and the block's proj.
        self.to_spatial = nn.Conv2d(dims, dims * sr_ratio * sr_ratio, 1) if sr_ratio > 1 \
            else nn.Identity()
        # The fused ops' extension is imported here, not on the first forward, where
        # torch.compile would trace the import and the backend state it sets.
        ops.prepare_backend()

    def partition_codes(self, tokens: Tensor) -> Tensor:
        """Partition code of every token and head: (B, heads, n, d) -> (B, heads, n)."""
        with torch.no_grad():
            if self.cfg.partition == 'lsh':
                return ops.lsh_hash(tokens, self.planes)
            batch, heads, n, d = tokens.shape
            codes = ops.kmeans_assign(
                tokens.reshape(batch * heads, n, d), self.num_partitions, self.cfg.kmeans_iters)
            return codes.view(batch, heads, n)

    def partition_importance(self, desc: Tensor, counts: Tensor) -> Tensor:
        """Importance of each partition (eq. 9): (G, K, d) descriptors -> (G, K) weights.

        SE-style coefficients ``sigmoid(FC(GELU(FC(.))))`` of each partition's descriptor
        (``'partition'``) or of the ``K`` descriptors of the group flattened (``'joint'``),
        normalised to sum to one over the non-empty partitions of each group; an empty
        partition gets weight 0.
        """
        if self.cfg.inter_importance == 'partition':
            logits = self.importance(desc).squeeze(-1)
        else:
            logits = self.importance(desc.flatten(1))  # (G, K, d) -> (G, K*d) -> (G, K)
        importance = torch.sigmoid(logits)
        importance = importance * (counts > 0).to(importance.dtype)
        return importance / importance.sum(-1, keepdim=True).clamp(min=1e-6)

    def inter_features(self, values: Tensor, codes: Tensor) -> Tensor:
        """Inter-partition features (eqs. 8-9): (G, n, d) values -> (G, K, d), the mean
        descriptor of each partition times its :meth:`partition_importance`."""
        desc, counts = ops.partition_mean(values, codes, self.num_partitions)
        return desc * self.partition_importance(desc, counts).unsqueeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        k = self.sr_ratio
        pad_h, pad_w = (-height) % k, (-width) % k
        z = self.down(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)
        h, w = z.shape[-2:]
        n = h * w
        tokens = z.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, n, C)
        values = self.value(tokens)
        heads, d = self.num_heads, self.head_dims
        # (B, n, C) -> (B, heads, n, d): each head partitions its own channels.
        tokens = tokens.view(batch, n, heads, d).transpose(1, 2)
        values = values.view(batch, n, heads, d).transpose(1, 2)
        codes = self.partition_codes(tokens).reshape(batch * heads, n)
        tokens = tokens.reshape(batch * heads, n, d)
        values = values.reshape(batch * heads, n, d)

        per_token: List[Tensor] = []  # (G, n, d) features of the tokens themselves
        pooled: List[Tensor] = []  # (G, K, d) partition features, scattered back below
        if self.cfg.use_intra and self.cfg.intra == 'pool':
            # Eqs. 6-7 pooled: per-channel softmax of the input over the partition weights the
            # transformed features into one proxy feature per partition.
            pooled.append(ops.partition_softmax_pool(tokens, values, codes, self.num_partitions))
        elif self.cfg.use_intra:
            # Eqs. 6-7 per token: each token's transformed feature times its softmax weight.
            weights = ops.partition_softmax(tokens, codes, self.num_partitions)
            per_token.append(weights * values.to(weights.dtype))
        if self.cfg.use_inter:
            pooled.append(self.inter_features(values, codes))
        if pooled:
            # Global to local: the partition features go back to the tokens in one gather.
            # Concatenating the (G, K, d) pooled features first is exactly the concatenation
            # of the gathered (G, n, d) maps, with K << n rows to copy.
            per_token.append(ops.partition_distribute(
                torch.cat(pooled, dim=-1) if len(pooled) > 1 else pooled[0], codes))
        y = torch.cat(per_token, dim=-1) if len(per_token) > 1 else per_token[0]
        # (B*heads, n, paths*d) -> (B, n, heads*paths*d)
        y = y.view(batch, heads, n, -1).transpose(1, 2).reshape(batch, n, -1)
        y = self.aggregate(y).transpose(1, 2).reshape(batch, channels, h, w)
        if k > 1:
            # Channel to spatial: (B, C, h, w) -> (B, C*k*k, h, w) -> (B, C, h*k, w*k).
            y = F.pixel_shuffle(self.to_spatial(y), k)[:, :, :height, :width]
        return x + y
