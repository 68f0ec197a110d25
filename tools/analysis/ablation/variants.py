# Copyright (c) dualformer-mm contributors.
"""The ablation variants: backbone options per named variant, and the paper's row each matches.

:data:`VARIANTS` is the one table to edit when a switch is added or renamed: each variant is a
dict of :class:`~dualformer_mm.DualFormer` options (dotted keys reach into dict options) and
the row of Table 5 or 6 of the paper it corresponds to, with the paper's numbers quoted.
:data:`SETS` names the built-in groups. :func:`parse_variant` reads the ``--variants`` form
``name:key=value,key=value`` and :func:`check_options` validates option names against the
backbone's signature, so a typo fails before any training with the accepted names.
"""
import ast
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

# Table 5 of the paper is measured on DualFormer-XS (ImageNet-1K top-1).
T5 = 'Table 5 (XS, ImageNet-1K top-1)'
T6 = 'Table 6 (XS, ImageNet-1K)'


@dataclass(frozen=True)
class Variant:
    """One ablation variant.

    Args:
        options: DualFormer options that differ from the defaults; ``{}`` is the full model.
        paper: The paper's row (or rows) this variant corresponds to, with its numbers, or
            what it is when the paper has no such row.
        paper_top1: The paper's top-1 (%) for this row, if the paper gives one.

    Example:
        >>> Variant({'mode': 'serial'}, 'Table 5: serial', 81.0).options
        {'mode': 'serial'}
    """

    options: Dict[str, Any] = field(default_factory=dict)
    paper: str = 'not in the paper'
    paper_top1: Optional[float] = None


VARIANTS: Dict[str, Variant] = {
    'full': Variant({}, f'{T5}: parallel, depth-wise, intra, inter: 81.5; {T6}: LSH, 81.5, '
                    '1253 img/s, 10.5M, 2.3 GFLOPs', 81.5),
    'serial': Variant({'mode': 'serial'},
                      f'{T5}: serial, depth-wise, intra, inter: 81.0', 81.0),
    'no-dw': Variant({'use_dwconv': False},
                     f'{T5}: parallel, no depth-wise, intra, inter: 81.2', 81.2),
    'intra-only': Variant({'use_dwconv': False, 'use_inter': False},
                          f'{T5}: parallel, no depth-wise, intra: 80.6', 80.6),
    'inter-only': Variant({'use_dwconv': False, 'use_intra': False},
                          f'{T5}: parallel, no depth-wise, inter: 80.8', 80.8),
    'kmeans': Variant({'partition': 'kmeans'},
                      f'{T6}: K-Means, 81.6, 806 img/s, 10.5M, 2.3 GFLOPs', 81.6),
    'intra-token': Variant({'intra': 'token'},
                           'not in the paper: the per-token reading of eqs. 6-7'),
}

SETS: Dict[str, List[str]] = {
    'table5': ['full', 'serial', 'no-dw', 'intra-only', 'inter-only'],
    'table6': ['full', 'kmeans'],
    'readings': ['full', 'intra-token'],
}

# Options of the shared budget (--arch, --drop-path-rate) and of the classifier, not of a variant.
RESERVED = ('arch', 'drop_path_rate', 'in_channels', 'out_indices', 'frozen_stages', 'init_cfg')


class VariantError(ValueError):
    """A bad variant name, option or value, reported without a traceback."""


def backbone_options() -> Dict[str, Any]:
    """DualFormer's constructor options a variant may set, with their defaults."""
    from dualformer_mm import DualFormer
    params = inspect.signature(DualFormer.__init__).parameters
    return {name: p.default for name, p in params.items()
            if name != 'self' and name not in RESERVED
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_options(name: str, options: Dict[str, Any]) -> None:
    """Raise :class:`VariantError` naming any option DualFormer does not take.

    A dotted key (``'a.b'``) sets key ``b`` of the dict option ``a``; it is accepted when ``a``
    is an option whose default is a dict that has ``b``.
    """
    accepted = backbone_options()
    for key in options:
        top, _, sub = key.partition('.')
        if top not in accepted:
            raise VariantError(f'variant {name!r}: unknown backbone option {top!r}; accepted: '
                               f'{", ".join(sorted(accepted))}')
        default = accepted[top]
        if sub and not (isinstance(default, dict) and sub in default):
            keys = sorted(default) if isinstance(default, dict) else []
            raise VariantError(f'variant {name!r}: option {top!r} has no key {sub!r}; '
                               f'accepted: {", ".join(f"{top}.{k}" for k in keys) or "none"}')


def describe(options: Dict[str, Any]) -> str:
    """``key=value, ...`` of a variant's options, ``defaults`` for none."""
    return ', '.join(f'{k}={v!r}' if isinstance(v, str) else f'{k}={v}'
                     for k, v in options.items()) or 'defaults'


def nest(options: Dict[str, Any]) -> Dict[str, Any]:
    """Dotted keys to nested dicts: ``{'a.b': 1}`` -> ``{'a': {'b': 1}}``."""
    out: Dict[str, Any] = {}
    for key, value in options.items():
        *parents, leaf = key.split('.')
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def _split_top_level(text: str) -> List[str]:
    """Split at commas outside brackets and quotes (values may be tuples or lists)."""
    parts, depth, quote, start = [], 0, '', 0
    for i, ch in enumerate(text):
        if quote:
            quote = '' if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _value(text: str) -> Any:
    """A Python literal (``False``, ``3``, ``(4, 4, 2, 1)``, ``'lsh'``) or a bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_variant(spec: str) -> Dict[str, Any]:
    """Parse ``name:key=value,key=value`` (or a built-in name) into ``{name: Variant}``.

    Example:
        >>> v = parse_variant('serial-kmeans:mode=serial,partition=kmeans')
        >>> v['serial-kmeans'].options
        {'mode': 'serial', 'partition': 'kmeans'}
    """
    name, sep, body = spec.partition(':')
    name = name.strip()
    if not name:
        raise VariantError(f'--variants {spec!r}: give a name, as in name:key=value,key=value')
    if not sep:
        if name not in VARIANTS:
            raise VariantError(f'--variants {spec!r}: {name!r} is not a built-in variant '
                               f'({", ".join(VARIANTS)}); define one as name:key=value,...')
        return {name: VARIANTS[name]}
    options = {}
    for item in _split_top_level(body):
        key, eq, value = item.partition('=')
        if not eq or not key.strip():
            raise VariantError(f'--variants {spec!r}: {item!r} is not key=value')
        options[key.strip()] = _value(value.strip())
    check_options(name, options)
    if name in VARIANTS and VARIANTS[name].options != options:
        raise VariantError(f'--variants {spec!r}: {name!r} is a built-in variant with options '
                           f'{VARIANTS[name].options}; choose another name')
    return {name: Variant(options, 'not in the paper (--variants)')}


def select(sets: Sequence[str], specs: Sequence[str]) -> Dict[str, Variant]:
    """The variants of the named sets and of ``--variants``, in order, without repeats."""
    chosen: Dict[str, Variant] = {}
    for set_name in sets:
        if set_name not in SETS:
            raise VariantError(f'unknown set {set_name!r}; accepted: {", ".join(SETS)}')
        chosen.update((n, VARIANTS[n]) for n in SETS[set_name])
    for spec in specs:
        for name, variant in parse_variant(spec).items():
            if name in chosen and chosen[name] != variant:
                raise VariantError(f'variant {name!r} is defined twice with different options')
            chosen[name] = variant
    if not chosen:
        raise VariantError('no variants: give --sets and/or --variants')
    return chosen
