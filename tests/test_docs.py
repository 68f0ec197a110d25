"""`make docs` fails on what would break the documentation site (a link to a missing page, a
reference to a missing API object, an autodoc target that does not import, a page outside
every toctree) and passes on a clean site."""
import os.path as osp
import subprocess
import sys
from typing import Dict

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

INDEX = """# Index

```{toctree}
page
```
"""


def _make_docs(tmp_path, pages: Dict[str, str]) -> subprocess.CompletedProcess:
    """`make docs` on a site of these pages with the project's Sphinx configuration."""
    src = tmp_path / 'src'
    src.mkdir()
    for name, text in pages.items():
        (src / name).write_text(text)
    # The venv of this interpreter; -o: its install stamp counts as up to date, so the target
    # only builds the docs.
    return subprocess.run(
        ['make', '--no-print-directory', f'VENV={sys.prefix}', '-o',
         osp.join(sys.prefix, '.dualformer-setup'), 'docs', f'DOCS_SRC={src}',
         f'DOCS_OUT={tmp_path / "html"}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_clean_site_builds(tmp_path):
    page = ('# Page\n\nSee {py:func}`example` and [the index](index.md).\n\n'
            '```{eval-rst}\n.. py:function:: example()\n\n   An example.\n```\n')
    run = _make_docs(tmp_path, {'index.md': INDEX, 'page.md': page})
    assert run.returncode == 0, run.stdout + run.stderr
    html = (tmp_path / 'html' / 'page.html').read_text()
    assert 'id="example"' in html and 'href="#example"' in html


def test_every_broken_reference_fails_the_build_and_is_named(tmp_path):
    page = ('# Page\n\nSee [the usage](missing.md) and {py:class}`dualformer_mm.NoSuchClass`.'
            '\n\n```{eval-rst}\n.. autoclass:: dualformer_mm.NoSuchBackbone\n```\n')
    run = _make_docs(tmp_path, {'index.md': INDEX, 'page.md': page, 'orphan.md': '# Orphan\n'})
    assert run.returncode != 0
    log = run.stdout + run.stderr
    for missing in ('missing.md', 'NoSuchClass', 'NoSuchBackbone', 'orphan'):
        assert missing in log, missing
