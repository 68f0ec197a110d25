# Copyright (c) dualformer-mm contributors.
"""Sphinx configuration of the dualformer-mm documentation (``make docs``).

The Markdown pages of this folder are read with myst-parser; the API reference
(``api.rst``) is generated from the package's docstrings (Google style, through napoleon).
``make docs`` runs Sphinx with ``-W --keep-going -n``: any warning fails the build, broken
cross-references included (``nitpicky``), so a renamed module, a moved page or a broken link
fails ``make test``.
"""
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # autodoc documents the tree being built, not an installed copy

import dualformer_mm  # noqa: E402

project = 'dualformer-mm'
author = 'dualformer-mm contributors'
copyright = f'2026, {author}'
release = dualformer_mm.__version__
version = '.'.join(release.split('.')[:2])

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'sphinx_copybutton',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

# Markdown: anchors for headings down to ###, so that pages can link to sections.
myst_heading_anchors = 3
myst_enable_extensions = ['colon_fence']

# API reference: Google-style docstrings, signatures with their type hints in the text.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_class_signature = 'separated'
autodoc_default_options = {'members': True, 'show-inheritance': True}
# A method that overrides a library's (a Hook's after_train_iter, a Function's forward) is
# documented by its own docstring or not at all, not by the library's text.
autodoc_inherit_docstrings = False

# Every cross-reference must resolve, except to the libraries whose inventories are not
# fetched (the build reads no network).
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(torch|np|numpy|mmengine|mmcv|mmdet|mmseg|mmpretrain|timm|onnx|'
     r'onnxruntime|typing|collections|contextlib|dataclasses|enum|abc|argparse)(\..*)?'),
    (r'py:.*', r'(Tensor|Module|nn\.Module|Optional|Union|Callable|Iterator|Sequence|Mapping|'
     r'Any|Dict|List|Tuple|ClassVar|Type|Path|Config|ConfigDict|BaseModule|BaseBackbone)'),
    (r'py:class', r'(optional|callable|tensor|bool|int|float|str|dict|list|tuple|default.*)'),
    # Private bases (``Bases: _OptionConfig``) are not part of the documented API.
    (r'py:class', r'.*\._[A-Za-z]\w*'),
    # Library classes that docstrings name by their short name.
    (r'py:class', r'(Runner|DataLoader|Dataset|Sampler|Hook|Dropout|BatchNorm|_BatchNorm|'
     r'LayerNorm|Conv2d|Linear|GELU|Function|EpochBasedTrainLoop|IterBasedTrainLoop)'),
]

html_theme = 'furo'
html_title = f'dualformer-mm {release}'
html_static_path: list = []
