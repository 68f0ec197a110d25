# Copyright (c) dualformer-mm contributors.
"""Export to ONNX with the exporter this torch has, and check the file in ONNX Runtime.

* :func:`export`: torch >= 2.5 (``compat.HAS_DYNAMO_ONNX_EXPORT``) uses the torch.export-based
  exporter (``dynamo=True``, onnxscript); torch 2.1-2.4 the TorchScript exporter. Both write
  opset :data:`OPSET` and one self-contained file. During export the partition ops take their
  reference decomposition into native ops (``dualformer_mm/ops/_backend.py``).
* :func:`export_checked` and :func:`strip_codes`: the graph to check, with the partition codes
  of every LSH MHPA as extra outputs, and the deployed file, the same graph without them.
* :func:`check`: runs the checked graph in ONNX Runtime and the toolbox's own computation in
  PyTorch made to use the partitions ONNX Runtime chose, and returns the largest absolute
  difference of the outputs (the export's fidelity), the tokens whose own PyTorch code
  differs from ONNX Runtime's and how near a plane they lay, and the tokens and partitions
  the MHPAs saw (so a report shows which regime was checked).
* :func:`op_types`: the ONNX operators of a file, by count.
"""
import collections
import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import compat, ops
from .partitions import CODES_PREFIX, TIE_MARGIN, CodesOutputs, summarize, watch_partitions
from .targets import ExportTarget

#: The ONNX opset of every export; ScatterElements with ``reduction='max'`` (the partition
#: max of the softmax pooling) needs 18.
OPSET = 18
#: The exporters :func:`export` takes; ``'auto'`` picks dynamo where this torch has it.
EXPORTERS = ('auto', 'dynamo', 'torchscript')
#: A dynamic export takes sides that are multiples of this, from 2x it (a 2x2 map at stride
#: 32) to MAX_SIDE, and batches up to MAX_BATCH.
DYNAMIC_MULTIPLE = 32
MAX_SIDE = 8192
MAX_BATCH = 1024
INPUT_NAME = 'images'


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
        output_names (Sequence[str]): Names of the outputs. Those that start with
            :data:`~dualformer_mm.deployment.partitions.CODES_PREFIX` are partition codes
            (B, heads, tokens): with ``dynamic``, their batch and tokens are symbolic.
        dynamic (bool): Batch, height and width symbolic. Defaults to False.
        exporter (str): One of :data:`EXPORTERS`. Defaults to ``'auto'``. With ``dynamic``
            or the TorchScript exporter, adaptive average pooling is exported as its exact
            averaging matrices (:func:`dynamic_rewrites`).

    Returns:
        str: The exporter used, ``'dynamo'`` or ``'torchscript'``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
        >>> export(net, torch.rand(1, 3, 8, 8), '/tmp/conv.onnx', ['y'])  # doctest: +SKIP
        'dynamo'
    """
    exporter = resolve_exporter(exporter)
    require('onnx', 'ONNX export', 'onnx')
    # The TorchScript exporter refuses adaptive pooling to a size that does not divide the
    # input's (UperNet's bins 3 and 6 of most maps) even at a static shape.
    rewrites = dynamic_rewrites(module) if dynamic or exporter == 'torchscript' else \
        contextlib.nullcontext()
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
                axes.update({name: {0: 'batch', 2: f'{name}_tokens'}
                             if name.startswith(CODES_PREFIX) else {0: 'batch'}
                             for name in output_names})
            with _torchscript_symbolics():
                torch.onnx.export(module, (images, ), path, opset_version=OPSET,
                                  input_names=[INPUT_NAME], output_names=list(output_names),
                                  dynamic_axes=axes, do_constant_folding=True,
                                  **({'dynamo': False} if compat.HAS_DYNAMO_ONNX_EXPORT else {}))
    return exporter


def export_checked(target: ExportTarget, images: Tensor, path: str, dynamic: bool = False,
                   exporter: str = 'auto') -> Tuple[str, List[str]]:
    """Export ``target`` with the partition codes of every LSH MHPA as extra outputs.

    The graph :func:`check` takes: ONNX Runtime returns the codes its partition ops used
    beside the outputs, and PyTorch is then made to use the same ones. :func:`strip_codes`
    writes the deployed file from it.

    Args:
        target (ExportTarget): What to export.
        images (Tensor): Example input (N, C, H, W).
        path (str): Output file.
        dynamic (bool): Batch, height and width symbolic. Defaults to False.
        exporter (str): One of :data:`EXPORTERS`. Defaults to ``'auto'``.

    Returns:
        tuple[str, list[str]]: The exporter used, and the names of the codes outputs (after
        ``target.output_names``; :data:`~dualformer_mm.deployment.partitions.CODES_PREFIX`
        and the MHPA's module name in the backbone).

    Example:
        >>> from dualformer_mm.deployment import build_target
        >>> target = build_target('configs/mmpretrain/dualformer_t_in1k.py')  # doctest: +SKIP
        >>> export_checked(target, torch.randn(1, 3, 64, 64), 'checked.onnx')  # doctest: +SKIP
        ('dynamo', ['codes.stages.0.blocks.0.attn', ..., 'codes.stages.3.blocks.1.attn'])
    """
    wrapped = CodesOutputs(target.module, target.backbone).eval()
    with torch.no_grad():
        wrapped(images)  # the names of the codes, in the order the MHPAs run
    names = list(target.output_names) + wrapped.code_names
    return export(wrapped, images, path, names, dynamic, exporter), wrapped.code_names


def _subgraph_inputs(node) -> Iterator[str]:
    """Names the subgraphs of ``node`` (If, Loop, Scan bodies) read, outer ones included."""
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_inputs(inner)


def strip_codes(src: str, dst: str) -> int:
    """Write ``src`` without its partition-code outputs to ``dst``: the deployed file.

    Only the outputs named :data:`~dualformer_mm.deployment.partitions.CODES_PREFIX` ... go,
    with the nodes and initializers nothing else needs: every other node is the checked
    graph's. ``src`` and ``dst`` may be the same file.

    Args:
        src (str): A file of :func:`export_checked`.
        dst (str): The file to write.

    Returns:
        int: How many outputs were removed.

    Example:
        >>> import onnx, os.path, tempfile
        >>> from onnx import TensorProto, helper
        >>> x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [2])
        >>> y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [2])
        >>> c = helper.make_tensor_value_info('codes.a', TensorProto.INT64, [2])
        >>> graph = helper.make_graph(
        ...     [helper.make_node('Relu', ['x'], ['y']), helper.make_node('Cast', ['x'],
        ...      ['codes.a'], to=TensorProto.INT64)], 'g', [x], [y, c])
        >>> path = os.path.join(tempfile.mkdtemp(), 'graph.onnx')
        >>> onnx.save(helper.make_model(graph), path)
        >>> strip_codes(path, path)
        1
        >>> [n.op_type for n in onnx.load(path).graph.node]
        ['Relu']
    """
    import onnx
    model = onnx.load(src)
    graph = model.graph
    outputs = [o for o in graph.output if not o.name.startswith(CODES_PREFIX)]
    removed = len(graph.output) - len(outputs)
    needed = {o.name for o in outputs}
    kept = []
    for node in reversed(graph.node):  # the nodes are in topological order
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_inputs(node))
    initializers = [t for t in graph.initializer if t.name in needed]
    value_info = [v for v in graph.value_info if v.name in needed]
    for items, new in ((graph.output, outputs), (graph.node, kept[::-1]),
                       (graph.initializer, initializers), (graph.value_info, value_info)):
        del items[:]
        items.extend(new)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return removed


def session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of ``path``.

    Args:
        path (str): An ONNX file.
        threads (int, optional): Intra-op threads (default: ONNX Runtime's choice).
    """
    require('onnxruntime', 'checking an export', 'onnxruntime')
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


@dataclass
class CheckResult:
    """One ONNX Runtime run against PyTorch (:func:`check`).

    Attributes:
        shape (tuple): The input's (N, C, H, W).
        max_abs_diff (float): The largest ``|onnxruntime - pytorch|`` over all outputs. With
            :attr:`imposed` codes, the export's fidelity: both computed the same partitions.
        max_abs_ref (float): The largest output magnitude, for scale.
        min_tokens (int, optional): Fewest tokens an MHPA partitioned (None: no MHPA).
        max_tokens (int, optional): Most tokens an MHPA partitioned.
        partitions (int, optional): Partitions per head.
        margin (float, optional): Smallest ``|cos|`` of a token to an LSH hyperplane normal in
            the PyTorch run (None: no LSH); under :data:`~dualformer_mm.deployment.partitions.TIE_MARGIN` is a near tie.
        imposed (bool): Whether PyTorch used ONNX Runtime's partition codes (the file has
            them as outputs, :func:`export_checked`).
        codes (dict): Per LSH MHPA, ``(differing, total)``: tokens (over batch and heads)
            whose own PyTorch code differs from ONNX Runtime's, of all it hashed. Empty
            without :attr:`imposed` codes.
        differing_cos (float, optional): The largest ``|cos|`` to a plane on which the two codes
            of a token differ (None: none differ).

    Example:
        >>> result = CheckResult((1, 3, 64, 64), 2e-7, 3.5, 4, 16, 8, 1e-7, True,
        ...                      {'stages.0.blocks.0.attn': (2, 512)}, 4e-8)
        >>> result.passed(1e-4), result.near_tie, f'{result.disagreement:.2%}'
        (True, True, '0.39%')
        >>> CheckResult((1, 3, 64, 64), 2e-7, 3.5, 4, 16, 8, 1e-2, True,
        ...             {'stages.0.blocks.0.attn': (2, 512)}, 0.3).passed(1e-4)
        False
    """

    shape: Tuple[int, int, int, int]
    max_abs_diff: float
    max_abs_ref: float
    min_tokens: Optional[int] = None
    max_tokens: Optional[int] = None
    partitions: Optional[int] = None
    margin: Optional[float] = None
    imposed: bool = False
    codes: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    differing_cos: Optional[float] = None

    @property
    def differing(self) -> int:
        """Tokens whose PyTorch and ONNX Runtime codes differ, over every MHPA."""
        return sum(d for d, _ in self.codes.values())

    @property
    def disagreement(self) -> float:
        """:attr:`differing` as a fraction of every token hashed (0 without codes)."""
        total = sum(t for _, t in self.codes.values())
        return self.differing / total if total else 0.0

    @property
    def near_tie(self) -> bool:
        """Whether a token lay within :data:`~dualformer_mm.deployment.partitions.TIE_MARGIN` of a hyperplane: rounding may
        partition it differently in ONNX Runtime and PyTorch."""
        return self.margin is not None and self.margin < TIE_MARGIN

    @property
    def codes_agree(self) -> bool:
        """Whether ONNX Runtime's codes are PyTorch's except at near ties (every plane on
        which they differ within :data:`~dualformer_mm.deployment.partitions.TIE_MARGIN` of the token): the file hashes as the
        model does. Without imposed codes there is nothing to compare: False."""
        return self.imposed and (self.differing_cos is None or self.differing_cos < TIE_MARGIN)

    def passed(self, atol: float) -> bool:
        """The verdict: with ONNX Runtime's partitions the outputs agree within ``atol``,
        and those partitions are PyTorch's up to near ties.

        Args:
            atol (float): The largest accepted :attr:`max_abs_diff`.
        """
        return self.codes_agree and self.max_abs_diff <= atol

    def describe(self) -> str:
        """One line for the report."""
        n, _, h, w = self.shape
        text = f'{n}x{h}x{w}: max |onnxruntime - pytorch| = {self.max_abs_diff:.3g}'
        if self.imposed:
            text += " with ONNX Runtime's partitions"
        text += f' (outputs up to {self.max_abs_ref:.3g})'
        if self.imposed:
            text += (f'; partition codes differ for {self.differing} of '
                     f'{sum(t for _, t in self.codes.values())} tokens')
            if self.differing:
                text += (f' ({self.disagreement:.3%}, largest |cos| to a plane they differ on '
                         f'{self.differing_cos:.2g}'
                         + ('' if self.codes_agree else ': not a near tie, the hash differs')
                         + ')')
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

    def describe_codes(self) -> List[str]:
        """One line per MHPA whose codes differ between the runtimes."""
        return [f'{name}: codes differ for {d} of {t} tokens ({d / t:.3%})'
                for name, (d, t) in self.codes.items() if d]


def check(target: ExportTarget, path: str, images: Tensor, sess=None) -> CheckResult:
    """Run ``path`` in ONNX Runtime and the toolbox's computation on ``images``; compare.

    When the file has partition-code outputs (:func:`export_checked`), PyTorch uses the
    codes ONNX Runtime computed, so that a token at a near tie, which rounding can put on
    either side of a plane, is partitioned alike in both: the difference of the outputs is
    then the export's alone. Each MHPA also hashes its own tokens, and the tokens whose code
    differs are counted with the largest ``|cos|`` to a plane they differ on. Without such
    outputs (a deployed file) PyTorch partitions by its own codes.

    The PyTorch side runs with the default op backend (the fused kernels when built), so the
    check also compares them with the decomposition the export holds.

    Args:
        target (ExportTarget): What was exported.
        path (str): The ONNX file.
        images (Tensor): Normalised images (N, C, H, W).
        sess (onnxruntime.InferenceSession, optional): A session of ``path``.

    Returns:
        CheckResult: The comparison.

    Raises:
        AssertionError: The file's outputs are not the target's (names or shapes).

    Example:
        >>> result = check(target, 'checked.onnx', torch.randn(1, 3, 64, 64))  # doctest: +SKIP
        >>> result.passed(1e-3), result.disagreement  # doctest: +SKIP
        (True, 0.0)
    """
    sess = sess or session(path)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {INPUT_NAME: images.numpy()})))
    outputs = [name for name in names if not name.startswith(CODES_PREFIX)]
    if outputs != list(target.output_names):
        raise AssertionError(f'{path} has the outputs {outputs}, the target '
                             f'{list(target.output_names)}')
    codes = {name[len(CODES_PREFIX):]: torch.from_numpy(value) for name, value in got.items()
             if name.startswith(CODES_PREFIX)}
    try:
        with torch.no_grad(), watch_partitions(target.backbone, codes or None) as records:
            want = target.reference(images)
    except (KeyError, ValueError) as err:
        raise AssertionError(f'{path}: its partition codes do not fit the model: {err}') \
            from None
    diff, scale = 0.0, 0.0
    for name, b in zip(target.output_names, want):
        a, b = got[name], b.float().numpy()
        if a.shape != b.shape:
            raise AssertionError(f'output {name}: onnxruntime shape {a.shape}, PyTorch {b.shape}')
        diff = max(diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(b).max()))
    cos = [r.differing_cos for r in records if r.differing_cos is not None]
    return CheckResult(tuple(images.shape), diff, scale, **summarize(records),
                       imposed=bool(codes),
                       codes={r.name: (r.differing, r.total) for r in records if r.name in codes},
                       differing_cos=max(cos) if cos else None)


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
