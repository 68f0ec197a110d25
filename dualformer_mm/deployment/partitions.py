# Copyright (c) dualformer-mm contributors.
"""The partitions MHPA chose in a run: recorded, compared, or imposed.

LSH puts a token in a partition by the signs of its projections on random hyperplanes
(eqs. 4-5). Where a projection is about as small as float32 rounding, two correct
computations of the same network (ONNX Runtime and PyTorch, or PyTorch's two op backends)
can put the token on opposite sides of the plane; it then joins another partition, and the
later stages and the outputs differ by far more than rounding. What is here lets a check
tell that apart from a wrong export:

* :func:`watch_partitions`: records, for every MHPA call, the tokens, the partitions, the
  hyperplane margin and the codes, and can make each LSH MHPA use given codes instead of its
  own (those another runtime computed), counting the tokens whose own code differs and how
  near a plane they were.
* :func:`partition_statistics`: the summary of a run that reports print.
* :class:`CodesOutputs`: the module to export with the codes of every LSH MHPA as extra
  outputs (named :data:`CODES_PREFIX` + the MHPA's module name), so that ONNX Runtime says
  which partitions it chose.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..models import PartitionAttention
from ..ops.partition import lsh_projection

#: Output names of the partition codes in a file exported from :class:`CodesOutputs`.
CODES_PREFIX = 'codes.'
#: A token whose ``|cos|`` to a hyperplane normal is under this is at a near tie: float32 rounding,
#: which differs between ONNX Runtime and PyTorch, can put it on either side of the plane.
#: Between PyTorch's two op backends on DualFormer-B the ``|cos|`` of a token to a plane moved by
#: up to 1.7e-6 over 3.75e5 projections (docs/deployment.md); this is three times that.
TIE_MARGIN = 5e-6


def partition_attentions(backbone: nn.Module) -> Dict[str, PartitionAttention]:
    """The MHPAs of ``backbone`` by module name, in module order.

    Example:
        >>> from dualformer_mm import DualFormer
        >>> names = list(partition_attentions(DualFormer('t')))
        >>> len(names), names[0]
        (10, 'stages.0.blocks.0.attn')
    """
    return {name: m for name, m in backbone.named_modules()
            if isinstance(m, PartitionAttention)}


def _cosines(tokens: Tensor, planes: Tensor) -> Tensor:
    """``|cos|`` between every token (B, H, n, d) and plane normal (H, d, P): (B, H, n, P)."""
    x, planes = tokens.detach().double(), planes.double()
    norms = x.norm(dim=-1, keepdim=True) * planes.norm(dim=1)[None, :, None, :]
    return lsh_projection(x, planes).abs() / norms.clamp_min(torch.finfo(torch.float64).tiny)


@dataclass
class PartitionRecord:
    """What one MHPA call partitioned (:func:`watch_partitions`).

    Attributes:
        name (str): The MHPA's module name in the backbone.
        tokens (int): Tokens per head and image.
        partitions (int): Partitions per head.
        codes (Tensor): The codes the MHPA used, (B, heads, tokens) int64.
        margin (float, optional): Smallest ``|cos|`` between a token and a hyperplane normal
            (None: K-Means partitions, no planes).
        differing (int): Tokens (over batch and heads) whose own code differs from the
            imposed one; 0 when none was imposed.
        differing_cos (float, optional): The largest ``|cos|`` to a plane on which a token's own
            code and the imposed one differ: under :data:`TIE_MARGIN` when every
            disagreement is a near tie. None when no code differs.
    """

    name: str
    tokens: int
    partitions: int
    codes: Tensor
    margin: Optional[float] = None
    differing: int = 0
    differing_cos: Optional[float] = None

    @property
    def total(self) -> int:
        """Tokens hashed, over batch and heads."""
        return self.codes.numel()


@contextlib.contextmanager
def watch_partitions(backbone: nn.Module, codes: Optional[Mapping[str, Tensor]] = None
                     ) -> Iterator[List[PartitionRecord]]:
    """Record every MHPA call of ``backbone`` in the body; optionally impose the LSH codes.

    Args:
        backbone (nn.Module): Holds the MHPAs (a DualFormer).
        codes (Mapping[str, Tensor], optional): Codes, (B, heads, tokens) int64, by MHPA
            module name (:func:`partition_attentions`): each LSH MHPA uses these instead of
            its own, and its record counts the tokens whose own code differs. Every LSH MHPA
            must have its entry, and runs once. Defaults to None (the MHPAs' own codes).

    Yields:
        list[PartitionRecord]: One per MHPA call, in call order, filled as the body runs.

    Raises:
        KeyError: ``codes`` lacks an MHPA that ran, or names one the backbone lacks.
        ValueError: Imposed codes of another shape than the MHPA's tokens, or an MHPA that
            ran twice.

    Example:
        >>> from dualformer_mm import DualFormer
        >>> net = DualFormer('t').eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad(), watch_partitions(net) as own:
        ...     y = net(x)
        >>> imposed = {r.name: r.codes for r in own}
        >>> last = 'stages.3.blocks.1.attn'
        >>> imposed[last] = torch.zeros_like(imposed[last])  # every token in partition 0
        >>> with torch.no_grad(), watch_partitions(net, imposed) as records:
        ...     z = net(x)
        >>> [(r.name, r.differing > 0) for r in records if r.differing]
        [('stages.3.blocks.1.attn', True)]
        >>> torch.equal(y[0], z[0]), torch.equal(y[-1], z[-1])  # the last stage changed
        (True, False)
    """
    attns = partition_attentions(backbone)
    hashed = {name: m for name, m in attns.items() if m.cfg.partition == 'lsh'}
    if codes is not None:
        unknown = sorted(set(codes) - set(hashed))
        if unknown:
            raise KeyError(f'codes given for {unknown}, which are not LSH MHPAs of the backbone')
    records: List[PartitionRecord] = []

    def watcher(name: str, attn: PartitionAttention) -> Callable[[Tensor], Tensor]:
        own_codes = attn.partition_codes

        def partition_codes(tokens: Tensor) -> Tensor:
            if any(r.name == name for r in records):
                raise ValueError(f'MHPA {name} ran twice; the records take one call per MHPA')
            own = own_codes(tokens)
            record = PartitionRecord(name, tokens.shape[2], attn.num_partitions, own)
            records.append(record)
            if name not in hashed:
                return own
            cos = _cosines(tokens, attn.planes)
            record.margin = float(cos.min()) if cos.numel() else None
            if codes is None:
                return own
            if name not in codes:
                raise KeyError(f'no codes given for MHPA {name}')
            used = codes[name].to(device=own.device, dtype=own.dtype)
            if used.shape != own.shape:
                raise ValueError(f'codes for MHPA {name} have shape {tuple(used.shape)}, its '
                                 f'tokens {tuple(own.shape)}')
            record.codes = used
            flipped = own ^ used  # the planes on whose side the two codes disagree
            record.differing = int((flipped != 0).sum())
            if record.differing:
                bits = (flipped[..., None] >> torch.arange(cos.shape[-1], device=own.device)) & 1
                record.differing_cos = float(cos[bits.bool()].max())
            return used

        return partition_codes

    for name, attn in attns.items():  # an instance attribute, in front of the method
        attn.partition_codes = watcher(name, attn)
    try:
        yield records
    finally:
        for attn in attns.values():
            del attn.partition_codes
    if codes is not None:
        missing = sorted(set(codes) - {r.name for r in records})
        if missing:
            raise KeyError(f'codes given for {missing}, which did not run')


@contextlib.contextmanager
def partition_statistics(backbone: nn.Module) -> Iterator[Dict[str, float]]:
    """Record the tokens, partitions and hyperplane margins of every MHPA of ``backbone``.

    The margin of an LSH partition is the smallest ``|cos|`` between a token and one of its
    head's hyperplane normals. Where it is about as small as float32 rounding (1e-7 to 1e-6),
    two correct computations of the same network (PyTorch and ONNX Runtime, or two op
    backends) can put that token on opposite sides of the plane: it joins another partition,
    and the later stages and outputs differ by far more than rounding.

    Args:
        backbone (nn.Module): Holds the MHPAs (a DualFormer).

    Yields:
        dict: Filled when the body ends: ``min_tokens`` and ``max_tokens``, the fewest and
        most tokens an MHPA partitioned, ``partitions``, the most partitions per head, and
        ``margin``, the smallest margin of all LSH hashes (absent for K-Means partitions);
        empty for a backbone without MHPA.

    Example:
        >>> from dualformer_mm import DualFormer
        >>> net = DualFormer('t').eval()
        >>> with partition_statistics(net) as stats:
        ...     _ = net(torch.rand(1, 3, 64, 64))
        >>> sorted(stats)
        ['margin', 'max_tokens', 'min_tokens', 'partitions']
        >>> stats['min_tokens'], stats['max_tokens'], stats['partitions']
        (4, 16, 8)
        >>> 0 < stats['margin'] < 1
        True
    """
    stats: Dict[str, float] = {}
    with watch_partitions(backbone) as records:
        yield stats
    stats.update(summarize(records))


def summarize(records: Sequence[PartitionRecord]) -> Dict[str, float]:
    """:func:`partition_statistics`' figures of ``records`` (empty: no MHPA ran).

    Example:
        >>> summarize([PartitionRecord('a', 16, 8, torch.zeros(1, 2, 16), 1e-3),
        ...            PartitionRecord('b', 4, 8, torch.zeros(1, 2, 4), 2e-4)])
        {'min_tokens': 4, 'max_tokens': 16, 'partitions': 8, 'margin': 0.0002}
    """
    if not records:  # a peer such as Swin-T has no MHPA
        return {}
    stats = dict(min_tokens=min(r.tokens for r in records),
                 max_tokens=max(r.tokens for r in records),
                 partitions=max(r.partitions for r in records))
    margins = [r.margin for r in records if r.margin is not None]
    if margins:
        stats['margin'] = min(margins)
    return stats


class CodesOutputs(nn.Module):
    """``module``'s outputs followed by the partition codes of every LSH MHPA of ``backbone``.

    What a checked export traces: the codes (B, heads, tokens) int64, in the order the MHPAs
    run, are the very values the graph's partition ops take, so ONNX Runtime returns the
    partitions it chose beside the outputs. :attr:`code_names` holds their output names
    (known after one call).

    Args:
        module (nn.Module): Takes images, returns a tuple of tensors.
        backbone (nn.Module): The DualFormer inside ``module``.

    Example:
        >>> from dualformer_mm import DualFormer
        >>> net = DualFormer('t', out_indices=(3, )).eval()
        >>> wrapped = CodesOutputs(net, net)
        >>> with torch.no_grad():
        ...     out = wrapped(torch.rand(2, 3, 64, 64))
        >>> len(out), wrapped.code_names[-1], tuple(out[-1].shape)
        (11, 'codes.stages.3.blocks.1.attn', (2, 5, 4))
    """

    def __init__(self, module: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.backbone = backbone
        #: The output names of the codes, after the model's own outputs.
        self.code_names: List[str] = []

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        recorded: List[Tuple[str, Tensor]] = []
        attns = {name: m for name, m in partition_attentions(self.backbone).items()
                 if m.cfg.partition == 'lsh'}

        def recorder(name: str, own_codes: Callable[[Tensor], Tensor]):
            def partition_codes(tokens: Tensor) -> Tensor:
                codes = own_codes(tokens)
                recorded.append((name, codes))
                return codes
            return partition_codes

        for name, attn in attns.items():
            attn.partition_codes = recorder(name, attn.partition_codes)
        try:
            outputs = tuple(self.module(x))
        finally:
            for attn in attns.values():
                del attn.partition_codes
        names = [CODES_PREFIX + name for name, _ in recorded]
        if len(set(names)) != len(names):
            raise ValueError('an MHPA ran twice in one forward; each must run once to export '
                             'its codes')
        self.code_names = names
        return outputs + tuple(codes for _, codes in recorded)
