"""Release metadata: the version, the license, the supported version ranges and the extras as
``setup.py`` writes them into the package metadata (``setup.py egg_info``: nothing compiled),
against ``dualformer_mm/version.py``, ``CHANGELOG.md``, ``CITATION.cff``, ``LICENSE`` and
``requirements/``.
"""
import doctest
import importlib.metadata as md
import importlib.util
import os
import os.path as osp
import pathlib
import re
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dualformer_mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_by_path(name: str, rel: str):
    """A module as setup.py loads it: by its file path, without importing the package."""
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


versions = _load_by_path('_dualformer_version_under_test', osp.join('dualformer_mm', 'version.py'))
RANGES = [versions.PYTHON, versions.TORCH, versions.NUMPY, versions.MMENGINE, versions.MMCV,
          versions.MMPRETRAIN, versions.MMDET, versions.MMSEG, versions.TIMM]


def _setup_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ('CUDA_HOME', 'CUDA_PATH', 'TORCH_CUDA_ARCH_LIST', 'DUALFORMER_CUDA')}
    # Metadata only: no toolkit lookup.
    env['DUALFORMER_CUDA'] = '0'
    env.update(extra)
    return env


@pytest.fixture(scope='module')
def dist(tmp_path_factory) -> md.Distribution:
    """The metadata ``setup.py egg_info`` writes, read as an installed distribution's."""
    base = tmp_path_factory.mktemp('egg')
    out = subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(base)],
                         cwd=ROOT, env=_setup_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (info, ) = base.glob('*.egg-info')
    return md.PathDistribution(pathlib.Path(info))


def _requirements(dist: md.Distribution, extra: str = None) -> Dict[str, Requirement]:
    """``{name: requirement}`` of the base requirements, or of one extra (markers dropped)."""
    found = {}
    for line in dist.requires or []:
        req = Requirement(line)
        marker = str(req.marker) if req.marker else ''
        if (extra is None and not marker) or (extra and marker == f'extra == "{extra}"'):
            req.marker = None
            found[canonicalize_name(req.name)] = req
    return found


def _pins(rel: str) -> Dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a requirements file."""
    with open(osp.join(ROOT, rel)) as f:
        return {canonicalize_name(m.group(1)): m.group(2) for m in
                (re.match(r'([A-Za-z0-9_.-]+)==([^\s#;]+)', line) for line in f) if m}


def _corner_python(rel: str) -> str:
    with open(osp.join(ROOT, rel)) as f:
        return re.search(r'^# python: *([\d.]+)', f.read(), re.M).group(1)


# ------------------------------------------------------------------------------ the version

def _newest_changelog_entry() -> Tuple[str, str]:
    with open(osp.join(ROOT, 'CHANGELOG.md')) as f:
        match = re.search(r'^## \[(\d[^\]]*)\] - (\d{4}-\d{2}-\d{2})$', f.read(), re.M)
    assert match, 'CHANGELOG.md has no "## [X.Y.Z] - YYYY-MM-DD" entry'
    return match.group(1), match.group(2)


def _citation() -> dict:
    with open(osp.join(ROOT, 'CITATION.cff')) as f:
        return yaml.safe_load(f)


def test_one_version_everywhere(dist):
    version = versions.__version__
    assert dualformer_mm.__version__ == version
    assert dualformer_mm.version_info == versions.parse_version_info(version)
    assert dist.version == version
    assert _newest_changelog_entry() == (version, str(_citation()['date-released']))
    assert str(_citation()['version']) == version


def test_version_info_parsing():
    assert versions.parse_version_info('0.1.0') == (0, 1, 0)
    assert versions.parse_version_info('2.10.3rc2') == (2, 10, 3, 'rc2')
    with pytest.raises(ValueError, match="got '0.1'"):
        versions.parse_version_info('0.1')
    assert versions.release('2.6.0a0+git1234') == (2, 6, 0)
    assert doctest.testmod(versions).failed == 0


def test_version_module_loads_without_torch_or_the_package():
    # setup.py reads it before torch, mmengine and mmcv are importable.
    code = ('import importlib.util, sys; '
            'spec = importlib.util.spec_from_file_location("v", '
            f'{osp.join(ROOT, "dualformer_mm", "version.py")!r}); '
            'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); '
            'print(sorted(n for n in ("torch", "numpy", "mmcv", "mmengine", "dualformer_mm") '
            'if n in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd='/',
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


# ------------------------------------------------------------------------------ the license

def _apache_body(text: str) -> List[str]:
    """The license text without its copyright lines (the only lines a project fills in)."""
    return [line.rstrip() for line in text.strip().splitlines()
            if not line.strip().startswith('Copyright ')]


def test_license_is_apache_2_and_the_metadata_says_so(dist):
    with open(osp.join(ROOT, 'LICENSE')) as f:
        text = f.read()
    owners = re.findall(r'^\s*Copyright (\d{4}) (.+?)\.?(?: All rights reserved\.)?$', text, re.M)
    assert owners and {o for _, o in owners} == {'dualformer-mm contributors'}, owners
    # Word for word the Apache-2.0 text that mmengine (Apache-2.0, like mmcv, mmdet, mmseg and
    # mmpretrain) ships in its distribution.
    reference = md.distribution('mmengine').read_text('LICENSE')
    if reference is None:
        pytest.skip('this mmengine distribution ships no LICENSE to compare with')
    assert _apache_body(text) == _apache_body(reference)

    import setuptools
    license_classifier = 'License :: OSI Approved :: Apache Software License'
    classifiers = dist.metadata.get_all('Classifier') or []
    if versions.release(setuptools.__version__) >= (77, ):
        # PEP 639: an SPDX expression, and no license classifier beside it.
        assert dist.metadata['License-Expression'] == 'Apache-2.0'
        assert license_classifier not in classifiers
    else:
        assert dist.metadata['License'] == 'Apache-2.0'
        assert license_classifier in classifiers
    assert 'LICENSE' in (dist.metadata.get_all('License-File') or [])
    assert _citation()['license'] == 'Apache-2.0'


# --------------------------------------------------------------------- the supported ranges

def test_requirements_are_the_supported_ranges(dist):
    base = _requirements(dist)
    expected = [versions.TORCH, versions.MMENGINE, versions.NUMPY]
    assert set(base) == {r.name for r in expected}
    for r in expected:
        assert base[r.name].specifier == Requirement(r.requirement).specifier, r.name
    assert dist.metadata['Requires-Python'] == versions.PYTHON.specifier
    for extra, ranges in (('mmpretrain', [versions.MMPRETRAIN]), ('mmdet', [versions.MMDET]),
                          ('mmseg', [versions.MMSEG])):
        reqs = _requirements(dist, extra)
        for r in ranges:
            assert reqs[r.name].specifier == Requirement(r.requirement).specifier, extra
    toolboxes = _requirements(dist, 'toolboxes')
    assert {n: str(r) for n, r in toolboxes.items()} == {
        n: str(r) for extra in ('mmpretrain', 'mmdet', 'mmseg')
        for n, r in _requirements(dist, extra).items()}
    # One classifier per Python from the oldest supported to the newest tested.
    pythons = {c.rsplit(' ', 1)[-1] for c in dist.metadata.get_all('Classifier')
               if re.fullmatch(r'Programming Language :: Python :: 3\.\d+', c)}
    newest = versions.release(versions.PYTHON.tested[-1])
    assert pythons == {f'3.{m}' for m in range(versions.PYTHON.minimum[1], newest[1] + 1)}


def _just_below(minimum: Tuple[int, ...]) -> str:
    """A version just older than ``minimum``: (2, 1) -> '2.0.999', (2, 0) -> '1.999.999'."""
    numbers = list(minimum) + [0] * (3 - len(minimum))
    for i in range(len(numbers) - 1, -1, -1):
        if numbers[i] > 0:
            numbers[i] -= 1
            return '.'.join(str(n) for n in numbers[:i + 1] + [999] * (len(numbers) - i - 1))
    raise ValueError(minimum)


def _fake_torch(root: pathlib.Path, version: str) -> str:
    (root / 'torch').mkdir(parents=True)
    (root / 'torch' / '__init__.py').write_text(f'__version__ = {version!r}\n')
    return str(root)


@pytest.mark.parametrize('which', ['older', 'newer'])
def test_setup_refuses_a_torch_outside_the_range(tmp_path, which):
    version = (_just_below(versions.TORCH.minimum) if which == 'older' else
               '.'.join(str(n) for n in versions.TORCH.below) + '.0')
    env = _setup_env(PYTHONPATH=_fake_torch(tmp_path, version))
    out = subprocess.run([sys.executable, 'setup.py', '--name'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert (f'RuntimeError: dualformer_mm supports torch {versions.TORCH.specifier}, found torch '
            f'{version}: install a supported torch first') in out.stderr


def test_ranges_end_one_release_series_after_the_newest_tested():
    # The upper bound is never a guess past what was tested, and every tested release is in
    # the range.
    for r in RANGES:
        assert list(r.tested) == sorted(r.tested, key=versions.release), r.name
        assert all(r.contains(v) for v in r.tested), r.name
        if r.below is not None:
            newest = versions.release(r.tested[-1])[:len(r.below)]
            assert newest[:-1] + (newest[-1] + 1, ) == r.below, r.name


def test_tested_releases_are_the_ones_the_corners_install():
    oldest, newest = _pins('requirements/compat-oldest.txt'), _pins(
        'requirements/compat-newest.txt')
    assert versions.PYTHON.tested == (_corner_python('requirements/compat-oldest.txt'),
                                      _corner_python('requirements/compat-newest.txt'))
    for r, name in ((versions.TORCH, 'torch'), (versions.NUMPY, 'numpy'),
                    (versions.MMENGINE, 'mmengine'), (versions.MMCV, 'mmcv-lite')):
        assert r.tested == (oldest[name], newest[name]), r.name
    # The oldest corner runs the oldest supported release (numpy below 1.26 is admitted
    # untested, as version.py says).
    for r in (versions.PYTHON, versions.TORCH, versions.MMENGINE, versions.MMCV):
        assert versions.release(r.tested[0])[:len(r.minimum)] == r.minimum, r.name
    stack = _pins('requirements/stack.txt')
    for r in (versions.MMPRETRAIN, versions.MMDET, versions.MMSEG):
        assert r.tested == (stack[r.name], ), r.name
    for name in ('torch', 'mmengine', 'mmcv'):
        assert {r.name: r for r in RANGES}[name].contains(stack[name]), name
    assert versions.TIMM.tested == (_pins('requirements/tests.txt')['timm'], )


# ----------------------------------------------------------------------- the tests extra

def test_tests_extra_holds_every_requirement_of_the_test_suite(dist):
    extra = _requirements(dist, 'tests')
    pins = _pins('requirements/tests.txt')
    assert set(extra) == set(pins)
    outside = {n: v for n, v in pins.items() if not extra[n].specifier.contains(v)}
    assert not outside, f'pins of requirements/tests.txt outside the tests extra: {outside}'

