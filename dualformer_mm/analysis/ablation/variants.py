# Copyright (c) dualformer-mm contributors.
"""The ablation variants: backbone options per named variant, and the paper's row each matches.

:data:`VARIANTS` is the one table to edit when a switch is added or renamed: each variant is a
dict of :class:`~dualformer_mm.DualFormer` options (``block_cfg.mode`` is key ``mode`` of the
``block_cfg`` dict) and
the row of Table 5 or 6 of the paper it corresponds to, with the paper's numbers quoted.
:data:`SETS` names the built-in groups. :func:`parse_variant` reads the ``--variants`` form
``name:key=value,key=value`` and :func:`resolve_key` validates option names against the
backbone's signature and its ``block_cfg`` / ``attn_cfg`` fields, so a typo fails before any
training with the accepted names.
"""
import ast
import inspect
from dataclasses import dataclass, field, fields
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
        >>> Variant({'block_cfg.mode': 'serial'}, 'Table 5: serial', 81.0).options
        {'block_cfg.mode': 'serial'}
    """

    options: Dict[str, Any] = field(default_factory=dict)
    paper: str = 'not in the paper'
    paper_top1: Optional[float] = None


B, A = 'block_cfg', 'attn_cfg'  # DualFormer's block and MHPA option dicts
# Table 5's "Depth-wise" off has two readings (docs/architecture.md): the MBConv branch without
# its depth-wise conv ('pointwise', a 1x1 conv) or no conv branch at all ('none').
VARIANTS: Dict[str, Variant] = {
    'full': Variant({}, f'{T5}: parallel, depth-wise, intra, inter: 81.5; {T6}: LSH, 81.5, '
                    '1253 img/s, 10.5M, 2.3 GFLOPs', 81.5),
    'serial': Variant({f'{B}.mode': 'serial'},
                      f'{T5}: serial, depth-wise, intra, inter: 81.0', 81.0),
    'no-dw-pointwise': Variant({f'{B}.local_branch': 'pointwise'},
                               f'{T5}: parallel, no depth-wise, intra, inter: 81.2', 81.2),
    'no-dw-none': Variant({f'{B}.local_branch': 'none'},
                          f'{T5}: parallel, no depth-wise, intra, inter: 81.2', 81.2),
    'intra-only': Variant({f'{B}.local_branch': 'pointwise', f'{A}.use_inter': False},
                          f'{T5}: parallel, no depth-wise, intra: 80.6', 80.6),
    'inter-only': Variant({f'{B}.local_branch': 'pointwise', f'{A}.use_intra': False},
                          f'{T5}: parallel, no depth-wise, inter: 80.8', 80.8),
    'intra-only-none': Variant({f'{B}.local_branch': 'none', f'{A}.use_inter': False},
                               f'{T5}: parallel, no depth-wise, intra: 80.6', 80.6),
    'inter-only-none': Variant({f'{B}.local_branch': 'none', f'{A}.use_intra': False},
                               f'{T5}: parallel, no depth-wise, inter: 80.8', 80.8),
    'kmeans': Variant({f'{A}.partition': 'kmeans'},
                      f'{T6}: K-Means, 81.6, 806 img/s, 10.5M, 2.3 GFLOPs', 81.6),
    'intra-token': Variant({f'{A}.intra': 'token'},
                           'not in the paper: the per-token reading of eqs. 6-7'),
    'inter-joint': Variant({f'{A}.inter_importance': 'joint'},
                           'not in the paper: eq. 9 with coefficients from all partitions'),
}

SETS: Dict[str, List[str]] = {
    'table5': ['full', 'serial', 'no-dw-pointwise', 'no-dw-none', 'intra-only', 'inter-only'],
    'table6': ['full', 'kmeans'],
    'readings': ['full', 'intra-token', 'inter-joint'],
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


def nested_options() -> Dict[str, List[str]]:
    """The keys of DualFormer's option dicts: ``{'block_cfg': ['mode', ...], ...}``."""
    from dualformer_mm.models import AttentionConfig, BlockConfig
    return {cls.arg_name: [f.name for f in fields(cls)]
            for cls in (BlockConfig, AttentionConfig)}


def resolve_key(name: str, key: str) -> str:
    """The full name of an option: ``mode`` -> ``block_cfg.mode``; unknown names raise.

    A key of one of the option dicts may be written alone (``mode``) or dotted
    (``block_cfg.mode``); any other key must be a DualFormer argument.
    """
    accepted, nested = backbone_options(), nested_options()
    top, dot, sub = key.partition('.')
    if dot:
        if top in nested and sub in nested[top]:
            return key
    elif top in accepted and top not in nested:
        return key
    else:
        owners = [arg for arg, keys in nested.items() if top in keys]
        if len(owners) == 1:
            return f'{owners[0]}.{top}'
    names = sorted([k for k in accepted if k not in nested]
                   + [f'{arg}.{k}' for arg, keys in nested.items() for k in keys])
    raise VariantError(f'variant {name!r}: unknown backbone option {key!r}; accepted: '
                       f'{", ".join(names)} (the keys of {" and ".join(nested)} also alone)')


def check_options(name: str, options: Dict[str, Any]) -> None:
    """Raise :class:`VariantError` naming any option DualFormer does not take."""
    for key in options:
        if resolve_key(name, key) != key:
            raise VariantError(f'variant {name!r}: write {key!r} as '
                               f'{resolve_key(name, key)!r} in the variant table')


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
        >>> v = parse_variant('serial-kmeans:mode=serial,attn_cfg.partition=kmeans')
        >>> v['serial-kmeans'].options
        {'block_cfg.mode': 'serial', 'attn_cfg.partition': 'kmeans'}
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
        options[resolve_key(name, key.strip())] = _value(value.strip())
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
