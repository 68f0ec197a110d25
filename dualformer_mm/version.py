# Copyright (c) dualformer-mm contributors.
"""The version of dualformer_mm and the versions of what it runs on, in one place.

Only the standard library is imported here: ``setup.py`` reads this file by its path, before
torch, mmengine or mmcv need to be importable (``import dualformer_mm`` needs all three), and
takes its version, ``python_requires``, ``install_requires`` and extras from it;
:mod:`dualformer_mm.compat` checks the installed torch and mmcv against the same ranges.

Each range admits ``minimum <= version < below`` (no upper bound where ``below`` is None).
``tested`` lists the releases the range was tested with, oldest first: for torch, Python,
numpy, mmengine and mmcv, the two corners ``make test-compat`` installs
(``requirements/compat-oldest.txt`` and ``requirements/compat-newest.txt``).

Example (``from dualformer_mm.version import TORCH, __version__, version_info``):
    >>> version_info[:3] == tuple(int(x) for x in __version__.split('.'))
    True
    >>> TORCH.requirement
    'torch>=2.1,<2.16'
    >>> TORCH.contains('2.1.2+cu121'), TORCH.contains('2.16.0'), TORCH.contains('2.0.1')
    (True, False, False)
"""
import re
from typing import NamedTuple, Optional, Tuple, Union

__version__ = '0.1.0'


def parse_version_info(version: str) -> Tuple[Union[int, str], ...]:
    """``version`` as a tuple, the form OpenMMLab packages give their ``version_info``.

    Args:
        version (str): ``MAJOR.MINOR.PATCH``, optionally followed by a pre-release tag
            (``a``, ``b`` or ``rc`` and a number).

    Returns:
        tuple: The three numbers, then the pre-release tag if there is one.

    Example:
        >>> parse_version_info('0.1.0')
        (0, 1, 0)
        >>> parse_version_info('1.0.0rc1')
        (1, 0, 0, 'rc1')
    """
    match = re.fullmatch(r'(\d+)\.(\d+)\.(\d+)((?:a|b|rc)\d+)?', version)
    if match is None:
        raise ValueError(f'version must be MAJOR.MINOR.PATCH with an optional a/b/rc tag, got '
                         f'{version!r}')
    numbers = tuple(int(match.group(i)) for i in (1, 2, 3))
    return numbers + ((match.group(4), ) if match.group(4) else ())


version_info = parse_version_info(__version__)


def release(version: str) -> Tuple[int, ...]:
    """The release numbers at the start of a version string.

    Local and pre-release parts are dropped: ``'2.6.0a0+git1234'`` is release ``(2, 6, 0)``.

    Args:
        version (str): A PEP 440 version, e.g. ``torch.__version__``.

    Returns:
        tuple[int, ...]: The numbers before the first character that is neither a digit nor
        a dot.

    Example:
        >>> release('2.1.2+cu121')
        (2, 1, 2)
    """
    match = re.match(r'\d+(?:\.\d+)*', version)
    if match is None:
        raise ValueError(f'cannot read a version number from {version!r}')
    return tuple(int(x) for x in match.group(0).split('.'))


def _dotted(numbers: Tuple[int, ...]) -> str:
    return '.'.join(str(n) for n in numbers)


class VersionRange(NamedTuple):
    """The versions of one distribution that dualformer_mm supports.

    Args:
        name (str): The distribution's name on the package index (``'python'`` for the
            interpreter).
        minimum (tuple[int, ...]): The oldest supported release (inclusive).
        below (tuple[int, ...], optional): The first release that is not supported; None for
            no upper bound.
        tested (tuple[str, ...]): The releases it was tested with, oldest first.

    Example:
        >>> MMENGINE.specifier
        '>=0.8.5,<0.11'
        >>> MMENGINE.contains('0.8.4'), MMENGINE.contains('0.10.7')
        (False, True)
    """

    name: str
    minimum: Tuple[int, ...]
    below: Optional[Tuple[int, ...]]
    tested: Tuple[str, ...]

    @property
    def oldest(self) -> str:
        """:attr:`minimum` as text, e.g. ``'2.1'``."""
        return _dotted(self.minimum)

    @property
    def newest_tested_series(self) -> str:
        """Major and minor of the newest tested release, e.g. ``'2.15'``."""
        return _dotted(release(self.tested[-1])[:2])

    @property
    def specifier(self) -> str:
        """The range as a PEP 440 specifier, e.g. ``'>=2.1,<2.16'``."""
        spec = f'>={_dotted(self.minimum)}'
        return spec if self.below is None else f'{spec},<{_dotted(self.below)}'

    @property
    def requirement(self) -> str:
        """The range as a pip requirement, e.g. ``'torch>=2.1,<2.16'``."""
        return f'{self.name}{self.specifier}'

    def too_old(self, version: str) -> bool:
        """Whether ``version`` is older than :attr:`minimum`."""
        return release(version) < self.minimum

    def too_new(self, version: str) -> bool:
        """Whether ``version`` is at or past :attr:`below`."""
        return self.below is not None and release(version) >= self.below

    def contains(self, version: str) -> bool:
        """Whether ``version`` is in the range."""
        return not (self.too_old(version) or self.too_new(version))


# Python 3.13 is left open: nothing in the code refuses it, but no corner has run it.
PYTHON = VersionRange('python', (3, 9), None, ('3.9', '3.12'))
# The ``tested`` pair is the compat corners; the pinned stack of ``make setup`` is torch 2.13.0
# and ``make compat-toolboxes`` adds 2.14.1. setup.py refuses to build against a torch past
# the newest tested: the extension compiles against torch's C++ headers, which change between
# releases (those of torch 2.14 need C++20).
TORCH = VersionRange('torch', (2, 1), (2, 16), ('2.1.2', '2.15.0'))
# 1.21 to 1.25 are admitted without having been run; 3.x does not exist yet.
NUMPY = VersionRange('numpy', (1, 21), (3, ), ('1.26.4', '2.5.5'))
# mmengine 0.7.1 to 0.8.4 fail to write a Runner's config with the yapf a resolver installs
# today (requirements/compat-oldest.txt); 0.10.7 is the newest release, and a 0.11 would be
# untested.
MMENGINE = VersionRange('mmengine', (0, 8, 5), (0, 11), ('0.8.5', '0.10.7'))
# mmcv or mmcv-lite (either one: neither is an install requirement, see setup.py). The corners
# run mmcv-lite; the toolboxes' corners and the pinned stack run mmcv 2.1.0.
MMCV = VersionRange('mmcv', (2, 0), (2, 3), ('2.0.0', '2.2.0'))
# The toolboxes, as setup.py's extras; each tested only at the release the pinned stack holds.
MMPRETRAIN = VersionRange('mmpretrain', (1, 0), (1, 3), ('1.2.0', ))
MMDET = VersionRange('mmdet', (3, 0), (3, 4), ('3.3.0', ))
MMSEG = VersionRange('mmsegmentation', (1, 0), (1, 3), ('1.2.2', ))
# Optional: the DualFormer models join timm's registry from timm 0.9
# (dualformer_mm.integrations); requirements/tests.txt pins the tested release.
TIMM = VersionRange('timm', (0, 9), None, ('1.0.31', ))

__all__ = [
    '__version__', 'version_info', 'parse_version_info', 'release', 'VersionRange', 'PYTHON',
    'TORCH', 'NUMPY', 'MMENGINE', 'MMCV', 'MMPRETRAIN', 'MMDET', 'MMSEG', 'TIMM'
]
