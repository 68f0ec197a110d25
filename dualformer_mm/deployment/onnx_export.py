# Copyright (c) dualformer-mm contributors.
"""Export to ONNX with the exporter this torch has, and check the file in ONNX Runtime.

* :func:`export`: torch >= 2.5 (``compat.HAS_DYNAMO_ONNX_EXPORT``) uses the torch.export-based
  exporter (``dynamo=True``, onnxscript); torch 2.1-2.4 the TorchScript exporter. Both write
  opset :data:`OPSET` and one self-contained file. During export the partition ops take their
  reference decomposition into native ops (``dualformer_mm/ops/_backend.py``).
* :func:`check`: runs the file in ONNX Runtime and the toolbox's own computation in PyTorch on
  the same images and returns the largest absolute difference, with the tokens and partitions
  the MHPAs saw (so a report shows which regime was checked).
* :func:`op_types`: the ONNX operators of a file, by count.
"""
import collections
import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import compat, ops
from .targets import ExportTarget, partition_statistics

#: ONNX opset: ScatterElements with ``reduction='max'`` (the partition max of the softmax
#: pooling) needs 18.
OPSET = 18
EXPORTERS = ('auto', 'dynamo', 'torchscript')
#: A dynamic export takes sides that are multiples of this, from 2x it (a 2x2 map at stride
#: 32) to MAX_SIDE, and batches up to MAX_BATCH.
DYNAMIC_MULTIPLE = 32
MAX_SIDE = 8192
MAX_BATCH = 1024
INPUT_NAME = 'images'
#: A hyperplane margin (``CheckResult.margin``) under this is a near tie: float32 rounding,
#: which differs between ONNX Runtime and PyTorch, can move a token across the plane. Between
#: PyTorch's two op backends on DualFormer-B the |cos| of a token to a plane moved by up to
#: 1.7e-6 over 3.75e5 projections (docs/deployment.md); this is three times that.
TIE_MARGIN = 5e-6
#: How many seeded images :func:`tie_free_images` draws at most.
TIE_FREE_DRAWS = 16


class _AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matrices built from the input's own size.

    The ONNX translation of ``adaptive_avg_pool2d`` is a fixed-kernel AveragePool computed
    at the traced size, so a dynamic export of UperNet's pyramid pooling (to 1, 2, 3 and 6)
    would be wrong at any other size. Bin ``i`` of ``o`` over ``n`` inputs spans
    ``[floor(i n / o), ceil((i + 1) n / o))``, as PyTorch pools.
    """

    def __init__(self, output_size) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, ) * 2
        self.output_size = tuple(size)

    @staticmethod
    def _matrix(out: Optional[int], size, like: Tensor) -> Tensor:
        """(out, size) rows averaging each bin; identity when ``out`` is None (keep)."""
        j = torch.arange(size, device=like.device)
        if out is None:
            return (j[:, None] == j[None, :]).to(like.dtype)
        i = torch.arange(out, device=like.device)
        start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = self._matrix(self.output_size[0], x.shape[-2], x)
        cols = self._matrix(self.output_size[1], x.shape[-1], x)
        return rows @ x @ cols.transpose(0, 1)


@contextlib.contextmanager
def dynamic_rewrites(module: nn.Module) -> Iterator[int]:
    """Swap modules whose ONNX translation fixes a traced size for exact equivalents.

    For the duration of the block only (the PyTorch check runs the toolbox's own modules).

    Yields:
        int: How many modules were swapped.

    Example:
        >>> net = nn.Sequential(nn.AdaptiveAvgPool2d(3))
        >>> x = torch.rand(1, 2, 7, 10)
        >>> with dynamic_rewrites(net) as swapped:
        ...     torch.allclose(net(x), nn.AdaptiveAvgPool2d(3)(x), atol=1e-6), swapped
        (True, 1)
        >>> type(net[0]).__name__
        'AdaptiveAvgPool2d'
    """
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                setattr(parent, name, _AdaptiveAvgPool2d(child.output_size))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _index_add_symbolic(g, self, dim, index, source, alpha=None):
    """``index_add`` for the TorchScript exporter as ``ScatterElements(reduction='add')``.

    Its own translation refuses repeated indices, which the partition sums are made of;
    ScatterElements adds every update, repeats included.
    """
    from torch.onnx import symbolic_helper as helper
    axis = helper._get_const(dim, 'i', 'dim')
    rank = helper._get_tensor_rank(source)
    if rank is None:
        raise DeploymentError('index_add: the rank of its source is unknown to the exporter')
    if alpha is not None and not helper._is_none(alpha) and \
            helper._maybe_get_const(alpha, 'f') != 1:
        source = g.op('Mul', source, alpha)
    others = [d for d in range(rank) if d != axis]
    if others:  # (N,) -> (N, 1, ...) along ``axis``, then the source's shape
        index = g.op('Unsqueeze', index, g.op('Constant', value_t=torch.tensor(others)))
    index = g.op('Expand', index, g.op('Shape', source))
    return g.op('ScatterElements', self, index, source, axis_i=axis, reduction_s='add')


_SCATTER_REDUCTIONS = {'sum': 'add', 'prod': 'mul', 'amax': 'max', 'amin': 'min'}


def _scatter_reduce_symbolic(g, self, dim, index, src, reduce, include_self=True):
    """``scatter_reduce`` for the TorchScript exporter as one ScatterElements with its
    reduction (its own translation loses the shape of a 2-d scatter, torch 2.13 and older)."""
    from torch.onnx import symbolic_helper as helper
    axis = helper._get_const(dim, 'i', 'dim')
    reduce = helper._maybe_get_const(reduce, 's')
    if reduce not in _SCATTER_REDUCTIONS or not helper._maybe_get_const(include_self, 'b'):
        raise DeploymentError(f'scatter_reduce(reduce={reduce!r}, include_self=False) has no '
                              'ScatterElements form')
    return g.op('ScatterElements', self, index, src, axis_i=axis,
                reduction_s=_SCATTER_REDUCTIONS[reduce])


_TORCHSCRIPT_SYMBOLICS = {'aten::index_add': _index_add_symbolic,
                          'aten::scatter_reduce': _scatter_reduce_symbolic}


@contextlib.contextmanager
def _torchscript_symbolics() -> Iterator[None]:
    """The partition ops' scatters as ScatterElements, for the duration of an export."""
    for name, fn in _TORCHSCRIPT_SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, OPSET)
    try:
        yield
    finally:
        for name in _TORCHSCRIPT_SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, OPSET)


class DeploymentError(Exception):
    """A missing package or an unsupported request, reported without a traceback."""


def require(module: str, purpose: str, pip: str) -> None:
    """Raise :class:`DeploymentError` naming ``pip`` when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise DeploymentError(f'{purpose} needs the {module} package: pip install {pip}')


def resolve_exporter(exporter: str = 'auto') -> str:
    """``'dynamo'`` or ``'torchscript'``: what ``exporter`` means on this torch.

    Raises:
        DeploymentError: ``'dynamo'`` on a torch without it, or an unknown name.
    """
    if exporter not in EXPORTERS:
        raise DeploymentError(f'--exporter must be one of {EXPORTERS}, got {exporter!r}')
    if exporter == 'auto':
        exporter = 'dynamo' if compat.HAS_DYNAMO_ONNX_EXPORT else 'torchscript'
    if exporter == 'dynamo':
        if not compat.HAS_DYNAMO_ONNX_EXPORT:
            raise DeploymentError(f'the dynamo ONNX exporter needs torch >= 2.5, this is torch '
                                  f'{torch.__version__}; use --exporter torchscript')
        require('onnxscript', 'the dynamo ONNX exporter', 'onnxscript')
    return exporter


def export(module: nn.Module, images: Tensor, path: str, output_names: Sequence[str],
           dynamic: bool = False, exporter: str = 'auto') -> str:
    """Export ``module`` on ``images`` to the ONNX file ``path``.

    Args:
        module (nn.Module): In eval mode; takes images, returns a tuple of tensors.
        images (Tensor): Example input (N, C, H, W).
        path (str): Output file.
        output_names (Sequence[str]): Names of the outputs.
        dynamic (bool): Batch, height and width symbolic. Defaults to False.
        exporter (str): One of :data:`EXPORTERS`. Defaults to ``'auto'``.

    Returns:
        str: The exporter used, ``'dynamo'`` or ``'torchscript'``.
    """
    exporter = resolve_exporter(exporter)
    require('onnx', 'ONNX export', 'onnx')
    rewrites = dynamic_rewrites(module) if dynamic else contextlib.nullcontext()
    with torch.no_grad(), ops.use_backend('auto'), rewrites:
        if exporter == 'dynamo':
            dims = None
            if dynamic:
                dim = torch.export.Dim
                # Sides as multiples of DYNAMIC_MULTIPLE: MHPA pads a map whose side its
                # stride does not divide, a branch a traced graph keeps for one case only.
                dims = ({0: dim('batch', min=1, max=MAX_BATCH),
                         2: DYNAMIC_MULTIPLE * dim('h', min=2, max=MAX_SIDE // DYNAMIC_MULTIPLE),
                         3: DYNAMIC_MULTIPLE * dim('w', min=2, max=MAX_SIDE // DYNAMIC_MULTIPLE)},
                        )
            program = torch.onnx.export(
                module, (images, ), None, dynamo=True, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=list(output_names),
                dynamic_shapes=dims, optimize=True, verify=False)
            program.save(path, external_data=False)  # one file (weights < 2 GB)
        else:
            axes = None
            if dynamic:
                axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
                axes.update({name: {0: 'batch'} for name in output_names})
            with _torchscript_symbolics():
                torch.onnx.export(module, (images, ), path, opset_version=OPSET,
                                  input_names=[INPUT_NAME], output_names=list(output_names),
                                  dynamic_axes=axes, do_constant_folding=True,
                                  **({'dynamo': False} if compat.HAS_DYNAMO_ONNX_EXPORT else {}))
    return exporter


def session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of ``path``."""
    require('onnxruntime', 'checking an export', 'onnxruntime')
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


@dataclass
class CheckResult:
    """One ONNX Runtime run against PyTorch."""

    shape: Tuple[int, int, int, int]
    max_abs_diff: float  # over all outputs
    max_abs_ref: float  # the largest output magnitude, for scale
    min_tokens: Optional[int] = None  # fewest tokens an MHPA partitioned (None: no MHPA)
    max_tokens: Optional[int] = None
    partitions: Optional[int] = None  # partitions per head
    # Smallest |cos| of a token to an LSH hyperplane normal in the PyTorch run (None: no LSH);
    # see targets.partition_statistics and TIE_MARGIN.
    margin: Optional[float] = None

    @property
    def near_tie(self) -> bool:
        """Whether a token lay within :data:`TIE_MARGIN` of a hyperplane: rounding may have
        partitioned it differently in ONNX Runtime, and the outputs may differ beyond it."""
        return self.margin is not None and self.margin < TIE_MARGIN

    def describe(self) -> str:
        """One line for the report."""
        n, _, h, w = self.shape
        text = (f'{n}x{h}x{w}: max |onnxruntime - pytorch| = {self.max_abs_diff:.3g} '
                f'(outputs up to {self.max_abs_ref:.3g})')
        if self.partitions is None:
            return text
        regime = 'fewer tokens than' if self.min_tokens < self.partitions else \
            'at least as many tokens as'
        text = (f'{text}; MHPA tokens per head {self.min_tokens}..{self.max_tokens} for '
                f'{self.partitions} partitions ({regime} partitions in the smallest)')
        if self.margin is not None:
            text += f'; hyperplane margin {self.margin:.2g}'
            if self.near_tie:
                text += ' (a near tie: see docs/deployment.md)'
        return text


def check(target: ExportTarget, path: str, images: Tensor, sess=None) -> CheckResult:
    """Run ``path`` in ONNX Runtime and the toolbox's computation on ``images``; compare.

    The PyTorch side runs with the default op backend (the fused kernels when built), so the
    check also compares them with the decomposition the export holds.
    """
    sess = sess or session(path)
    with torch.no_grad(), partition_statistics(target.backbone) as stats:
        want = target.reference(images)
    got = sess.run(None, {INPUT_NAME: images.numpy()})
    if len(got) != len(want):
        raise AssertionError(f'{path} gives {len(got)} outputs, PyTorch {len(want)}')
    diff, scale = 0.0, 0.0
    for name, a, b in zip(target.output_names, got, want):
        b = b.float().numpy()
        if a.shape != b.shape:
            raise AssertionError(f'output {name}: onnxruntime shape {a.shape}, PyTorch {b.shape}')
        diff = max(diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(b).max()))
    return CheckResult(tuple(images.shape), diff, scale, **stats)


def tie_free_images(target: ExportTarget, shape: Sequence[int], draws: int = TIE_FREE_DRAWS,
                    seed: int = 0) -> Tuple[Tensor, Optional[float]]:
    """Seeded normal images of ``shape`` on which no token is near an LSH hyperplane.

    Draws the images of seeds ``seed, seed + 1, ...`` and runs PyTorch on each until one has
    a hyperplane margin of at least :data:`TIE_MARGIN` (:func:`.targets.partition_statistics`).
    An image holds one projection per token, head and plane of every MHPA, so the chance that
    it is tie-free falls with its size: for DualFormer-B (random weights) 7 of 16 seeds at
    1x3x128x160, 3 of 16 at 2x3x96x128, none of 4 at 2x3x256x256.

    Args:
        target (ExportTarget): What is exported.
        shape (Sequence[int]): (N, C, H, W).
        draws (int): How many images to try. Defaults to :data:`TIE_FREE_DRAWS`.
        seed (int): The first seed. Defaults to 0.

    Returns:
        tuple: The first tie-free image, or the one with the widest margin when none of the
        draws is; and its margin (None for a network without LSH partitions).
    """
    best, widest = None, -1.0
    for i in range(draws):
        images = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + i))
        with torch.no_grad(), partition_statistics(target.backbone) as stats:
            target.reference(images)
        margin = stats.get('margin')
        if margin is None or margin >= TIE_MARGIN:
            return images, margin
        if margin > widest:
            best, widest = images, margin
    return best, widest


def op_types(path: str) -> Dict[str, int]:
    """ONNX operator types of the file ``path`` (functions inlined by the exporter) by count."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    for function in model.functions:
        counts.update(node.op_type for node in function.node)
    return dict(sorted(counts.items()))


def check_sizes(shape: Tuple[int, int], dynamic: bool, divisor: int,
                extra: Optional[List[Tuple[int, int]]] = None) -> List[Tuple[int, int]]:
    """The input sizes to check: the export's, and with ``dynamic`` a second one.

    The second size is in the other partition regime than the first where it can be: a
    small image (a 2x2 map at stride 32, fewer tokens than partitions in the late stages) for
    a large export size, a larger one otherwise; both rounded to ``divisor``.

    Example:
        >>> check_sizes((512, 512), True, 32)
        [(512, 512), (64, 96)]
        >>> check_sizes((64, 64), True, 1)
        [(64, 64), (224, 160)]
    """
    sizes = [tuple(shape)]
    if extra:
        sizes += [tuple(s) for s in extra]
    elif dynamic:
        h, w = shape
        # Unequal sides and a different aspect, so no dimension is silently fixed.
        second = (64, 96) if h * w > 128 * 128 else (224, 160)
        sizes.append(tuple(-(-s // divisor) * divisor for s in second))
    return sizes
