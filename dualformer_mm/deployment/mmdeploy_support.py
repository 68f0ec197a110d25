# Copyright (c) dualformer-mm contributors.
"""What mmdeploy 1.3.1 needs to export DualFormer models on the torch this package supports.

mmdeploy 1.3.1 (its last release) was written for torch 1.x-2.1 and its TorchScript-based
ONNX export. Importing this module registers, in mmdeploy's own rewriter registries, the
mends listed in :data:`MENDS`; each names the mmdeploy or torch version it is for and is
registered only where that version needs it (the torch conditions are flags of
:mod:`dualformer_mm.compat`):

* ``torchscript-exporter`` (torch >= 2.9): ``torch.onnx.export`` exports with the
  torch.export-based exporter by default, which cannot take what mmdeploy passes (its dynamic
  axes, data samples bound to the forward, traced Python ints); a function rewrite of
  ``torch.onnx.export`` adds ``dynamo=False`` inside mmdeploy's export.
* ``cast-long`` (torch >= 2.10): ``torch.onnx.symbolic_opset9._cast_Long``, which
  mmdeploy 1.3.1's RoIAlign translation imports, was removed; it is put back as the
  one ``Cast`` to INT64 it was (a documented patch of that torch module).
* ``partition-scatters`` (mmdeploy, every torch): the TorchScript exporter's own
  translations refuse ``index_add`` with repeated indices and lose the shape of a 2-d
  ``scatter_reduce``; the partition ops of every MHPA are made of both. The package's
  translations (:mod:`dualformer_mm.deployment.onnx_export`) are registered as mmdeploy
  symbolic rewrites, as ``ScatterElements`` with their reduction.
* ``exact-adaptive-pool`` (mmdeploy 1.3.1, backend ``onnxruntime``): mmdeploy rewrites
  ``adaptive_avg_pool2d`` as ``avg_pool2d`` with kernel and stride ``size // bins``, which
  averages other pixels than PyTorch wherever the bins do not divide the map (UperNet's
  pyramid pooling to 2, 3 and 6 bins at most sizes) and, in a dynamic export, fixes the kernel
  of the traced size. Here it becomes two averaging matrices built from the input's size
  (:class:`~dualformer_mm.deployment.onnx_export._AdaptiveAvgPool2d`): exact at every size.
* ``fx-wraps`` (torch >= 2.1): mmdeploy 1.3.1 leaves its rewriter context by popping, as from a
  list, the ``torch.fx.wrap`` registrations made inside it; torch keeps them in a dict, so an
  export during which a module registers one (the torch.export-based exporter's first import
  does) ends in ``KeyError: -1`` with every rewrite left in place (``torch.onnx.export`` and
  mmdet's functions stay patched for the rest of the process). mmdeploy adds none of its own
  there (its copies of wrapped functions look them up as pairs), so its exit is patched to
  leave torch's registrations alone and restore the rewritten functions.
* ``layer-norm-opset18`` (mmdeploy 1.3.1, backend ``onnxruntime``): mmdeploy's own
  ``layer_norm`` translation (a decomposition for torch <= 1.12) writes ``ReduceMean`` with
  ``axes`` as an attribute, which opset 18 made an input: a Swin-T (or any model with a
  ``LayerNorm``) exported at opset 18 is an invalid ONNX file. At opset 18 and above it becomes
  torch's own translation, one ``LayerNormalization`` (opset 17); below, mmdeploy's.
* ``opset-check`` (every version): DualFormer needs ONNX opset 18 (``ScatterElements`` with
  ``reduction='max'``); mmdeploy's default is 11. A rewrite of ``DualFormer.forward`` raises
  an error naming ``onnx_config=dict(opset_version=18)`` below it, instead of an exporter
  error about ``einsum`` deep inside the backbone.

The module must be imported in every process that exports or builds a deployed model.
``tools/deploy.py`` of mmdeploy runs each step in a spawned process, which loads the configs
from their files: a model or deploy config that names it in ``custom_imports`` brings it
there (``configs/deploy/``).

Example:
    >>> from dualformer_mm.deployment import mmdeploy_support
    >>> [m.name for m in mmdeploy_support.MENDS if m.active]  # doctest: +SKIP
    ['torchscript-exporter', 'cast-long', 'partition-scatters', 'exact-adaptive-pool',
     'fx-wraps', 'layer-norm-opset18', 'opset-check']
"""
import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

#: How to install mmdeploy next to onnx >= 1.23 without touching torch, mmcv or onnx.
INSTALL_COMMAND = 'pip install --no-deps -r requirements/deploy.txt'
#: The mmdeploy release the mends are written for.
MMDEPLOY_VERSION = '1.3.1'

if importlib.util.find_spec('mmdeploy') is None:
    raise ImportError(
        'dualformer_mm.deployment.mmdeploy_support needs mmdeploy 1.3.1: from the dualformer-mm '
        f'repository, {INSTALL_COMMAND} (mmdeploy with --no-deps: it pins protobuf<=3.20.2, '
        'which onnx >= 1.23 refuses; docs/deployment.md, "Deploy with mmdeploy")')

import mmdeploy  # noqa: E402
import torch  # noqa: E402
from mmdeploy.core import FUNCTION_REWRITER, SYMBOLIC_REWRITER  # noqa: E402
from mmdeploy.core.rewriters.function_rewriter import FunctionRewriter  # noqa: E402
from torch.fx._symbolic_trace import _wrapped_fns_to_patch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.nn.modules.utils import _pair  # noqa: E402

from .. import compat  # noqa: E402
from .onnx_export import (OPSET, DeploymentError, _AdaptiveAvgPool2d,  # noqa: E402
                          _index_add_symbolic, _scatter_reduce_symbolic)

if compat.parse_version(mmdeploy.__version__) != compat.parse_version(MMDEPLOY_VERSION):
    raise ImportError(f'dualformer_mm.deployment.mmdeploy_support is written for mmdeploy '
                      f'{MMDEPLOY_VERSION}, found {mmdeploy.__version__}: {INSTALL_COMMAND}')


@dataclass(frozen=True)
class Mend:
    """One registration that makes mmdeploy export DualFormer models correctly.

    Args:
        name (str): Short name, used by :func:`suspended`.
        reason (str): What breaks without it, and for which versions.
        active (bool): Whether this torch and mmdeploy need it (it is registered only then).
        registrations (tuple): ``(registry, function name)`` pairs of mmdeploy's rewriter
            registries that hold it (empty for a patch of torch).

    Example:
        >>> mend = next(m for m in MENDS if m.name == 'exact-adaptive-pool')
        >>> mend.active, mend.registrations
        (True, (('FUNCTION_REWRITER', 'torch.nn.functional.adaptive_avg_pool2d'),))
    """

    name: str
    reason: str
    active: bool
    registrations: Tuple[Tuple[str, str], ...] = ()


# --- exporter ------------------------------------------------------------------------------


def _torch_onnx_export__torchscript(*args, **kwargs):
    """``torch.onnx.export`` inside mmdeploy's export, with the TorchScript exporter."""
    ctx = FUNCTION_REWRITER.get_context()
    kwargs.setdefault('dynamo', False)
    return ctx.origin_func(*args, **kwargs)


# --- the removed torch helper ----------------------------------------------------------------


def _cast_long(g, input, non_blocking):
    """``torch.onnx.symbolic_opset9._cast_Long`` as torch <= 2.9 defined it: a Cast to INT64."""
    return g.op('Cast', input, to_i=torch._C._onnx.TensorProtoDataType.INT64)


def _restore_cast_long() -> None:
    """Put ``_cast_Long`` back into ``torch.onnx.symbolic_opset9`` for mmdeploy's RoIAlign."""
    from torch.onnx import symbolic_opset9
    if not hasattr(symbolic_opset9, '_cast_Long'):
        symbolic_opset9._cast_Long = _cast_long


# --- partition scatters ----------------------------------------------------------------------


def _index_add__scatter_elements(g, self, dim, index, source, alpha=None):
    """``index_add`` as ``ScatterElements(reduction='add')`` (repeated indices included)."""
    return _index_add_symbolic(g, self, dim, index, source, alpha)


def _scatter_reduce__scatter_elements(g, self, dim, index, src, reduce, include_self=True):
    """``scatter_reduce`` as one ``ScatterElements`` with its reduction."""
    return _scatter_reduce_symbolic(g, self, dim, index, src, reduce, include_self)


# --- exact adaptive pooling ------------------------------------------------------------------


def _adaptive_avg_pool2d__exact(input: Tensor, output_size) -> Tensor:
    """``adaptive_avg_pool2d`` with PyTorch's bins at every input size, for ONNX Runtime."""
    ctx = FUNCTION_REWRITER.get_context()
    size = _pair(output_size)
    if all(s == 1 for s in size):  # a global average: exact in every translation
        return ctx.origin_func(input, output_size)
    return _AdaptiveAvgPool2d(size)(input)


# --- torch.fx wraps --------------------------------------------------------------------------

_ORIGINAL_EXIT = FunctionRewriter.exit


def _exit_keeping_fx_wraps(self) -> None:
    """mmdeploy's ``FunctionRewriter.exit`` without popping torch.fx's wraps by index."""
    self._ori_fx_wrap_num = len(_wrapped_fns_to_patch)
    _ORIGINAL_EXIT(self)


# --- layer norm at opset 18 ------------------------------------------------------------------

#: The first opset whose ``ReduceMean`` takes ``axes`` as an input, not an attribute.
REDUCE_AXES_INPUT_OPSET = 18
_LAYER_NORM_ARGS = ('v', 'is', 'v', 'v', 'f', 'i')


def _layer_norm__opset18(g, input, normalized_shape, weight, bias, eps, cudnn_enable):
    """``layer_norm`` as one ``LayerNormalization`` from opset 18 on, mmdeploy's below."""
    if g.opset < REDUCE_AXES_INPUT_OPSET:
        from mmdeploy.pytorch.symbolics.layer_norm import layer_norm__default
        return layer_norm__default(g, input, normalized_shape, weight, bias, eps, cudnn_enable)
    from torch.onnx import symbolic_opset17
    return symbolic_opset17.layer_norm(g, input, normalized_shape, weight, bias, eps,
                                       cudnn_enable)


# --- opset ------------------------------------------------------------------------------------


def _export_opset(ctx) -> int:
    """The opset of the export under way (mmdeploy's context, else its deploy config)."""
    opset = getattr(ctx, 'opset', None)
    if opset is None:
        from mmdeploy.utils import get_ir_config
        opset = get_ir_config(ctx.cfg).get('opset_version', 11)
    return int(opset)


def _dualformer_forward__opset_check(self, x: Tensor):
    """``DualFormer.forward``, refusing an ONNX export below opset :data:`OPSET`."""
    ctx = FUNCTION_REWRITER.get_context()
    if torch.onnx.is_in_onnx_export():
        opset = _export_opset(ctx)
        if opset < OPSET:
            raise DeploymentError(
                f'DualFormer exports to ONNX opset >= {OPSET} (the partition max is a '
                f"ScatterElements with reduction='max'); this export asks for opset {opset}: set "
                f'onnx_config=dict(opset_version={OPSET}) in the deploy config')
    return ctx.origin_func(self, x)


# --- registration ------------------------------------------------------------------------------

_FUNCTION = 'FUNCTION_REWRITER'
_SYMBOLIC = 'SYMBOLIC_REWRITER'

#: Every mend this module knows, in the order they are registered; ``active`` says which
#: this torch and mmdeploy need.
MENDS: List[Mend] = [
    Mend('torchscript-exporter',
         'torch >= 2.9 exports with the torch.export-based exporter by default, which cannot '
         "take mmdeploy 1.3.1's export arguments: torch.onnx.export gets dynamo=False",
         compat.ONNX_EXPORT_DYNAMO_BY_DEFAULT, ((_FUNCTION, 'torch.onnx.export'), )),
    Mend('cast-long',
         'torch >= 2.10 removed torch.onnx.symbolic_opset9._cast_Long, which the RoIAlign '
         'translation of mmdeploy 1.3.1 imports: put back as the Cast to INT64 it was',
         not compat.ONNX_HAS_CAST_LONG),
    Mend('partition-scatters',
         "the TorchScript exporter's translations refuse index_add with repeated indices and "
         'lose the shape of a 2-d scatter_reduce: both become ScatterElements',
         True, ((_SYMBOLIC, 'index_add'), (_SYMBOLIC, 'scatter_reduce'))),
    Mend('exact-adaptive-pool',
         "mmdeploy 1.3.1's adaptive_avg_pool2d rewrite (avg_pool2d, kernel size // bins) "
         "differs from PyTorch's bins where they do not divide the map: averaging matrices for "
         'the onnxruntime backend instead',
         True, ((_FUNCTION, 'torch.nn.functional.adaptive_avg_pool2d'), )),
    Mend('fx-wraps',
         "torch >= 2.1 keeps torch.fx's wraps in a dict, which mmdeploy 1.3.1 pops as a list on "
         'leaving its rewriter context (KeyError: -1, rewrites left in place): its exit leaves '
         "torch's wraps alone", compat.FX_WRAPS_IN_A_DICT),
    Mend('layer-norm-opset18',
         "mmdeploy 1.3.1's layer_norm translation writes ReduceMean with an axes attribute, "
         'which opset 18 made an input (an invalid file for Swin-T): from opset 18, torch\'s '
         'LayerNormalization, for the onnxruntime backend',
         True, ((_SYMBOLIC, 'layer_norm'), )),
    Mend('opset-check',
         f'DualFormer needs opset >= {OPSET}; mmdeploy defaults to 11: a clear error instead of '
         "the exporter's",
         True, ((_FUNCTION, 'dualformer_mm.DualFormer.forward'), )),
]
_MENDS: Dict[str, Mend] = {mend.name: mend for mend in MENDS}


def _registry(kind: str) -> Dict[str, list]:
    """The records of one of mmdeploy's rewriter registries, by function name."""
    rewriter = FUNCTION_REWRITER if kind == _FUNCTION else SYMBOLIC_REWRITER
    return rewriter._registry._rewrite_records


def _register() -> None:
    """Register every active mend (once per process: a second import is a no-op)."""
    if _MENDS['torchscript-exporter'].active:
        FUNCTION_REWRITER.register_rewriter('torch.onnx.export')(_torch_onnx_export__torchscript)
    if _MENDS['cast-long'].active:
        _restore_cast_long()
    if _MENDS['fx-wraps'].active:
        FunctionRewriter.exit = _exit_keeping_fx_wraps
    SYMBOLIC_REWRITER.register_symbolic('index_add', is_pytorch=True)(
        _index_add__scatter_elements)
    SYMBOLIC_REWRITER.register_symbolic('scatter_reduce', is_pytorch=True)(
        _scatter_reduce__scatter_elements)
    FUNCTION_REWRITER.register_rewriter(
        'torch.nn.functional.adaptive_avg_pool2d', backend='onnxruntime')(
            _adaptive_avg_pool2d__exact)
    SYMBOLIC_REWRITER.register_symbolic(
        'layer_norm', backend='onnxruntime', is_pytorch=True,
        arg_descriptors=list(_LAYER_NORM_ARGS))(_layer_norm__opset18)
    FUNCTION_REWRITER.register_rewriter('dualformer_mm.DualFormer.forward')(
        _dualformer_forward__opset_check)


_register()


@contextlib.contextmanager
def suspended(*names: str) -> Iterator[None]:
    """Take mends out of mmdeploy's registries for the duration of the block.

    What an export gives without a mend shows what the mend is for (the parity tests use it
    to show that their tolerances catch a wrong export). Rewrites are collected when
    mmdeploy's ``RewriterContext`` is entered, so export inside the block.

    Args:
        *names (str): Names of :data:`MENDS` registered in mmdeploy's registries
            (``'partition-scatters'``, ``'exact-adaptive-pool'``, ``'layer-norm-opset18'``,
            ``'opset-check'``, ``'torchscript-exporter'`` where active).

    Raises:
        ValueError: A name that is not a mend, or a mend that is not a registration here.

    Example:
        >>> with suspended('exact-adaptive-pool'):  # doctest: +SKIP
        ...     torch2onnx(img, work_dir, 'end2end.onnx', deploy_cfg, model_cfg)
    """
    taken = []
    for name in names:
        mend = _MENDS.get(name)
        if mend is None or not mend.active or not mend.registrations:
            raise ValueError(f'names must be registered mends, one of '
                             f'{[m.name for m in MENDS if m.active and m.registrations]}; '
                             f'got {name!r}')
    wanted = {fn for name in names for _, fn in _MENDS[name].registrations}
    own = (_torch_onnx_export__torchscript, _index_add__scatter_elements,
           _scatter_reduce__scatter_elements, _adaptive_avg_pool2d__exact,
           _layer_norm__opset18, _dualformer_forward__opset_check)
    try:
        for name in names:
            for kind, function in _MENDS[name].registrations:
                records = _registry(kind).get(function, [])
                for record in list(records):
                    if record['_object'] in own and function in wanted:
                        records.remove(record)
                        taken.append((records, record))
        yield
    finally:
        for records, record in taken:
            records.append(record)
