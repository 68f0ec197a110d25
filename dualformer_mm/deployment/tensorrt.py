# Copyright (c) dualformer-mm contributors.
"""An ONNX rewrite for TensorRT's parser: ScatterND with a reduction becomes ScatterElements.

The partition sums of MHPA (``index_add`` in the reference ops) export as
``ScatterND(reduction='add')`` with indices of shape (N, 1), one row of the data per index.
TensorRT's ONNX parser (10.x) does not take ScatterND with a reduction; it takes
ScatterElements with one (through its scatterElements plugin). For indices of that shape the
two are the same operation: ``ScatterElements(data, expand(indices, shape(updates)), updates,
axis=0)`` adds row ``updates[i]`` into ``data[indices[i]]`` as ScatterND does. The rewritten
file is checked in ONNX Runtime like any export
(``tools/deployment/pytorch2onnx.py --scatter-elements``).
"""
from typing import List, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper  # noqa: F401  (TensorProto: the example)


def _ranks(model: onnx.ModelProto) -> dict:
    """Rank of every value whose rank shape inference knows (dims may be symbolic)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField('shape'):
            ranks[info.name] = (len(tensor.shape.dim),
                                tensor.shape.dim[-1].dim_value if tensor.shape.dim else 0)
    for init in inferred.graph.initializer:
        ranks[init.name] = (len(init.dims), init.dims[-1] if init.dims else 0)
    return ranks


def scatter_nd_to_elements(model: onnx.ModelProto) -> Tuple[int, int]:
    """Rewrite, in place, every ``ScatterND(reduction=add|mul|max|min)`` of the main graph
    whose indices are (N, 1) as ScatterElements on axis 0.

    Args:
        model (onnx.ModelProto): The exported model.

    Returns:
        tuple[int, int]: Nodes rewritten, and ScatterND nodes with a reduction left as they
        were (indices of another shape, or ranks shape inference could not tell).

    Example:
        >>> data = helper.make_tensor_value_info('data', TensorProto.FLOAT, [4, 3])
        >>> idx = helper.make_tensor_value_info('idx', TensorProto.INT64, ['n', 1])
        >>> upd = helper.make_tensor_value_info('upd', TensorProto.FLOAT, ['n', 3])
        >>> out = helper.make_tensor_value_info('out', TensorProto.FLOAT, [4, 3])
        >>> node = helper.make_node('ScatterND', ['data', 'idx', 'upd'], ['out'],
        ...                         reduction='add')
        >>> graph = helper.make_graph([node], 'g', [data, idx, upd], [out])
        >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
        >>> scatter_nd_to_elements(model)
        (1, 0)
        >>> [n.op_type for n in model.graph.node]
        ['Reshape', 'Shape', 'Expand', 'ScatterElements']
    """
    ranks = _ranks(model)
    nodes: List[onnx.NodeProto] = []
    rewritten = kept = 0
    for node in model.graph.node:
        reduction = next((a.s.decode() for a in node.attribute if a.name == 'reduction'), 'none')
        if node.op_type != 'ScatterND' or reduction == 'none':
            nodes.append(node)
            continue
        data, indices, updates = node.input
        index_rank, index_last = ranks.get(indices, (None, None))
        update_rank = ranks.get(updates, (None, None))[0]
        if index_rank != 2 or index_last != 1 or update_rank is None:
            nodes.append(node)
            kept += 1
            continue
        base = f'{node.name or node.output[0]}_as_elements'
        # (N, 1) -> (N, 1, ..., 1) of the updates' rank, then broadcast to their shape.
        shape = f'{base}_index_shape'
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([-1] + [1] * (update_rank - 1), dtype=np.int64), shape))
        nodes += [
            helper.make_node('Reshape', [indices, shape], [f'{base}_index'],
                             name=f'{base}_reshape'),
            helper.make_node('Shape', [updates], [f'{base}_updates_shape'],
                             name=f'{base}_shape'),
            helper.make_node('Expand', [f'{base}_index', f'{base}_updates_shape'],
                             [f'{base}_indices'], name=f'{base}_expand'),
            helper.make_node('ScatterElements', [data, f'{base}_indices', updates],
                             list(node.output), name=base, axis=0, reduction=reduction),
        ]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept += sum(1 for f in model.functions for n in f.node if n.op_type == 'ScatterND')
    return rewritten, kept


def rewrite_file(path: str) -> Tuple[int, int]:
    """:func:`scatter_nd_to_elements` on the ONNX file ``path``, saved in place."""
    model = onnx.load(path)
    counts = scatter_nd_to_elements(model)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return counts
