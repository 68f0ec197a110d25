# Copyright (c) dualformer-mm contributors.
"""README.md says what the code does: its relative links resolve, and its support table is
that of ``dualformer_mm/version.py`` (its cost table: tests/test_complexity.py)."""
import os.path as osp
import re

import pytest

from dualformer_mm import version

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def readme() -> str:
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        return f.read()


def test_relative_links_and_images_resolve(readme):
    targets = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', readme)
    local = [t for t in targets if not re.match(r'[a-z]+://', t)]
    assert local, 'no relative link found: the pattern no longer matches the README'
    missing = [t for t in local if not osp.exists(osp.join(ROOT, t))]
    assert not missing, f'README.md links to files that do not exist: {missing}'


def test_support_table_is_that_of_the_package(readme):
    for label, span in (('torch', version.TORCH), ('Python', version.PYTHON),
                        ('mmengine', version.MMENGINE), ('mmcv or mmcv-lite', version.MMCV)):
        row = re.search(rf'^\| {re.escape(label)} \| ([^|]+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$',
                        readme, re.MULTILINE)
        assert row, f'README.md has no support row for {label}'
        supported, oldest, newest = (cell.strip() for cell in row.groups())
        assert supported == f'{span.oldest} to {span.newest_tested_series}', label
        # The corners of make test-compat are the ranges' tested releases.
        assert (oldest.split()[-1], newest.split()[-1]) == (span.tested[0], span.tested[-1]), label
