# Copyright (c) dualformer-mm contributors.
"""The options of DualFormer's blocks: ``BlockConfig`` and ``AttentionConfig``.

Each is one frozen dataclass, given to :class:`~dualformer_mm.models.DualFormer` as a dict
(``block_cfg=dict(...)``, ``attn_cfg=dict(...)``), checked once with errors that name the key
and its accepted values, and passed down whole to every block and every MHPA. The fields are
the paper's ablations (Tables 5 and 6) and the readings of its ambiguous equations, which
``docs/architecture.md`` quotes.
"""
import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Tuple, Union


class _OptionConfig:
    """Base of the option dataclasses: built from a partial dict, checked in one place."""

    # The argument name users write (``'attn_cfg'``) and the accepted values of each option
    # that takes one of a few names.
    arg_name: ClassVar[str] = ''
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {}

    @classmethod
    def build(cls, cfg: Union[None, Mapping[str, Any], '_OptionConfig']) -> Any:
        """The config of ``cfg``: None gives the defaults, a dict overrides some of them.

        Args:
            cfg (None | Mapping | config): The options; a config of this class is returned
                as it is.

        Returns:
            The config, checked.

        Raises:
            TypeError: ``cfg`` is neither a mapping nor a config of this class.
            ValueError: A key is not an option, or a value is not accepted; the message
                names the key and the accepted options or values.
        """
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f'{cls.arg_name} must be a dict or {cls.__name__}, '
                            f'got {type(cfg).__name__}')
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(accepted))
        if unknown:
            raise ValueError(f'{cls.arg_name} has no option {", ".join(map(repr, unknown))}; '
                             f'the options are {accepted}')
        return cls(**cfg)

    def _check_choices(self) -> None:
        for name, accepted in self.choices.items():
            value = getattr(self, name)
            if value not in accepted:
                raise ValueError(f'{self.arg_name}[{name!r}] must be one of {accepted}, '
                                 f'got {value!r}')

    def _check_bool(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f'{self.arg_name}[{name!r}] must be True or False, '
                                 f'got {value!r}')


@dataclasses.dataclass(frozen=True)
class AttentionConfig(_OptionConfig):
    """Options of Multi-Head Partition Attention, the same in every block (section 3.2).

    Given to :class:`~dualformer_mm.models.DualFormer` as ``attn_cfg=dict(...)`` (any subset
    of the fields) and passed down whole to every
    :class:`~dualformer_mm.models.PartitionAttention`. ``docs/architecture.md`` quotes
    the paper for each reading.

    Attributes:
        partition (str): Partition generator: ``'lsh'``, random hyperplanes (eqs. 4-5), or
            ``'kmeans'`` (Table 6). Defaults to ``'lsh'``.
        kmeans_iters (int): Lloyd iterations of ``'kmeans'``. Defaults to 3.
        intra (str): Reading of intra-partition attention (eqs. 6-7): ``'pool'``, one
            softmax-pooled proxy feature per partition scattered back to its tokens, or
            ``'token'``, each token's transformed feature scaled by its softmax weight.
            Defaults to ``'pool'``.
        use_intra (bool): Intra-partition attention (Table 5 "Intra"). Defaults to True.
        use_inter (bool): Inter-partition attention (Table 5 "Inter"). Defaults to True.
        inter_importance (str): Reading of the importance coefficients of eq. 9:
            ``'partition'``, each partition's coefficient from its own descriptor by an MLP
            shared by the partitions, or ``'joint'``, all coefficients of a head from all its
            descriptors at once (SENet's excitation). Defaults to ``'partition'``.

    Example:
        >>> AttentionConfig.build(dict(intra='token'))
        AttentionConfig(partition='lsh', kmeans_iters=3, intra='token', use_intra=True, \
use_inter=True, inter_importance='partition')
    """

    arg_name: ClassVar[str] = 'attn_cfg'
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {
        'partition': ('lsh', 'kmeans'),
        'intra': ('pool', 'token'),
        'inter_importance': ('partition', 'joint'),
    }

    partition: str = 'lsh'
    kmeans_iters: int = 3
    intra: str = 'pool'
    use_intra: bool = True
    use_inter: bool = True
    inter_importance: str = 'partition'

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_bool('use_intra', 'use_inter')
        if not (self.use_intra or self.use_inter):
            raise ValueError(f"{self.arg_name}: at least one of 'use_intra' and 'use_inter' "
                             'must be True')
        if isinstance(self.kmeans_iters, bool) or not isinstance(self.kmeans_iters, int) \
                or self.kmeans_iters < 1:
            raise ValueError(f"{self.arg_name}['kmeans_iters'] must be an int >= 1, "
                             f'got {self.kmeans_iters!r}')


@dataclasses.dataclass(frozen=True)
class BlockConfig(_OptionConfig):
    """Options of the Dual Attention Block, the same in every block (section 3.3).

    Given to :class:`~dualformer_mm.models.DualFormer` as ``block_cfg=dict(...)`` (any subset
    of the fields) and passed down whole to every
    :class:`~dualformer_mm.models.DualAttentionBlock`.

    Attributes:
        mode (str): ``'parallel'``, the paper's dual path (the channels split between the
            local branch and MHPA), or ``'serial'``, the local branch then MHPA on all
            channels (Table 5 "Parallel"). Defaults to ``'parallel'``.
        conv_ratio (float): Share of the channels given to the local branch in parallel
            mode. Defaults to 0.5.
        local_branch (str): The convolution branch (Table 5 "Depth-wise"): ``'mbconv'``, a
            1x1 conv then a depth-wise 3x3 conv; ``'pointwise'``, the 1x1 conv alone; or
            ``'none'``, no convolution branch: MHPA takes all channels, in either mode (so
            ``mode`` and ``conv_ratio`` make no difference). Defaults to ``'mbconv'``.

    Example:
        >>> BlockConfig.build(dict(mode='serial'))
        BlockConfig(mode='serial', conv_ratio=0.5, local_branch='mbconv')
    """

    arg_name: ClassVar[str] = 'block_cfg'
    choices: ClassVar[Dict[str, Tuple[str, ...]]] = {
        'mode': ('parallel', 'serial'),
        'local_branch': ('mbconv', 'pointwise', 'none'),
    }

    mode: str = 'parallel'
    conv_ratio: float = 0.5
    local_branch: str = 'mbconv'

    def __post_init__(self) -> None:
        self._check_choices()
        if isinstance(self.conv_ratio, bool) or not isinstance(self.conv_ratio, (int, float)) \
                or not 0 < self.conv_ratio < 1:
            raise ValueError(f"{self.arg_name}['conv_ratio'] must be a number in (0, 1), "
                             f'got {self.conv_ratio!r}')

