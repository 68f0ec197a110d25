# Copyright (c) dualformer-mm contributors.
"""Ratios to Swin-T, and the project's targets, printed with the results.

A :class:`Target` is a ratio to the same run's Swin-T that the project aims for;
:func:`evaluate_targets` computes the ones a run can judge, and records whether the run is at
the setting they are defined at (:func:`at_target_setting`).
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from .options import Settings
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


@dataclass(frozen=True)
class Target:
    """A ratio to Swin-T that the project aims for, printed with the results.

    Args:
        model (str): The model it is about.
        metric (str): The row key compared with the reference's (e.g. ``'img_per_s'``).
        comparison (str): ``'>='`` (at least ``bound`` times the reference) or ``'<='``.
        bound (float): The ratio.
        label (str): What the metric is, for the printed line (empty: the script's main
            figure).

    Example:
        >>> t = Target('dualformer-s', 'peak_mib', '<=', 1.0, 'peak memory')
        >>> rows = [dict(model='dualformer-s', peak_mib=90.0),
        ...         dict(model='swin-t', peak_mib=100.0)]
        >>> [(r['ratio'], r['met']) for r in evaluate_targets(rows, [t], at_setting=True)]
        [(0.9, True)]
    """

    model: str
    metric: str
    comparison: str
    bound: float
    label: str = ''

    def __post_init__(self) -> None:
        if self.comparison not in ('>=', '<='):
            raise ValueError(f"comparison must be '>=' or '<=', got {self.comparison!r}")


def at_target_setting(target_setting: Dict[str, Any], settings: Settings, **run: Any) -> bool:
    """Whether a run is at the setting its targets are defined at.

    Args:
        target_setting (dict): The setting: ``device`` and ``amp``, plus run values such as
            ``size`` and ``batch``.
        settings (Settings): The run's options (``device``, ``amp``).
        **run: The run's values of the other keys of ``target_setting``.

    Returns:
        bool: True when every key of ``target_setting`` matches.

    Example:
        >>> s = Settings(device='cpu', threads=2, amp=False, amp_dtype=None,
        ...              channels_last=False, compile=False, warmup=1, repeat=1, iters=1)
        >>> at_target_setting(dict(device='cpu', amp=False, batch=32), s, batch=16)
        False
    """
    actual = dict(run, device=settings.device, amp=settings.amp)
    return all(actual.get(key) == value for key, value in target_setting.items())


def evaluate_targets(rows: List[Dict[str, Any]], targets: Sequence[Target], at_setting: bool,
                     reference: str = REFERENCE_MODEL) -> List[Dict[str, Any]]:
    """The targets that this run can evaluate (both models measured, without error).

    Args:
        rows (List[Dict]): Result rows with ``model``, ``error`` and the targets' metrics.
        targets (Sequence[Target]): What to check.
        at_setting (bool): Whether the run is at the setting the targets are defined at;
            recorded, and printed by :func:`format_target` when it is not.
        reference (str): The model the ratios are to. Defaults to Swin-T.

    Returns:
        List[Dict[str, Any]]: Per evaluated target: ``model``, ``reference``, ``metric``,
        ``label``, ``min_ratio`` (for ``>=``) or ``max_ratio`` (for ``<=``), ``ratio``,
        ``value``, ``reference_value``, ``met`` and ``at_target_setting``.
    """
    by_name = {r['model']: r for r in rows if not r.get('error')}
    results = []
    for t in targets:
        if t.model not in by_name or reference not in by_name:
            continue
        value, base = by_name[t.model].get(t.metric), by_name[reference].get(t.metric)
        if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)
                                                 and base > 0):
            continue
        ratio = value / base
        bound_key = 'min_ratio' if t.comparison == '>=' else 'max_ratio'
        results.append({'model': t.model, 'reference': reference, 'metric': t.metric,
                        'label': t.label, bound_key: t.bound, 'ratio': ratio, 'value': value,
                        'reference_value': base,
                        'met': ratio >= t.bound if t.comparison == '>=' else ratio <= t.bound,
                        'at_target_setting': at_setting})
    return results


def format_target(result: Dict[str, Any], setting: str) -> str:
    """One line such as ``target dualformer-s >= 1.1x swin-t: 1.42x, met``.

    Args:
        result (Dict[str, Any]): One entry of :func:`evaluate_targets`.
        setting (str): The target setting in words, named when the run is not at it.
    """
    if 'min_ratio' in result:
        comparison, bound = '>=', result['min_ratio']
    else:
        comparison, bound = '<=', result['max_ratio']
    label = f' {result["label"]}' if result['label'] else ''
    where = '' if result['at_target_setting'] else (
        f' (this run is not at the target setting, {setting})')
    return (f'target {result["model"]}{label} {comparison} {bound}x {result["reference"]}: '
            f'{result["ratio"]:.2f}x, {"met" if result["met"] else "NOT met"}{where}')
