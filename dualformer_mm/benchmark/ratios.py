# Copyright (c) dualformer-mm contributors.
"""Ratios to the same run's Swin-T, printed with the results of the benchmark scripts."""
import math
from typing import Any, Dict, List

from .zoo import REFERENCE_MODEL


def add_ratio(rows: List[Dict[str, Any]], key: str, ratio_key: str,
              reference: str = REFERENCE_MODEL) -> None:
    """Set ``row[ratio_key] = row[key] / reference's row[key]`` in every row, in place.

    None where the reference is missing or failed, or the row failed. Rows whose ``model``
    is ``reference`` get 1.0, so the ratio is always to the same run's Swin-T.

    Example:
        >>> rows = [dict(model='dualformer-s', ms=50.0), dict(model='swin-t', ms=100.0)]
        >>> add_ratio(rows, 'ms', 'ms_ratio'); [r['ms_ratio'] for r in rows]
        [0.5, 1.0]
    """
    ref = next((r for r in rows if r['model'] == reference and not r.get('error')), None)
    base = ref[key] if ref else None
    usable = base is not None and math.isfinite(base) and base > 0
    for row in rows:
        value = row.get(key)
        ok = usable and not row.get('error') and value is not None and math.isfinite(value)
        row[ratio_key] = value / base if ok else None
