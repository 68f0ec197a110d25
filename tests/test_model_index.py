"""The model index: ``model-index.yml``, the metafiles it imports and the model pages
(``configs/*/README.md``), read as mim and the toolboxes read them (yaml; ``modelindex``, the
parser mim and mmpretrain use; mmpretrain's ``ModelHub``), against the configs, the paper's
figures the package holds (``dualformer_mm.utils.complexity``) and the figures each config's
second line quotes.
"""
import collections
import glob
import os.path as osp
import re
import warnings
from typing import Dict, List, Optional, Tuple

import pytest
import yaml

from dualformer_mm.utils.complexity import PAPER_TABLE1, PAPER_TABLE3, PAPER_TABLE4

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLBOXES = ('mmpretrain', 'mmdet', 'mmseg')
# The paper's cost table for each toolbox's models: (parameters in M, GFLOPs) per size.
COST = {'mmpretrain': PAPER_TABLE1, 'mmdet': PAPER_TABLE3, 'mmseg': PAPER_TABLE4}
PAPER_URL = 'https://arxiv.org/abs/2305.14768'
PAPER_TITLE = 'Dual Path Transformer with Partition Attention'


def _yaml(rel: str):
    with open(osp.join(ROOT, rel)) as f:
        return yaml.safe_load(f)


def _metafiles() -> List[str]:
    return _yaml('model-index.yml')['Import']


def _models() -> List[Tuple[str, dict]]:
    """(metafile, model entry) of every model the index imports."""
    return [(meta, model) for meta in _metafiles() for model in _yaml(meta)['Models']]


def _toolbox(meta: str) -> str:
    return meta.split('/')[1]


def _size(config: str) -> str:
    return re.search(r'dualformer_(t|xs|s|b)_', osp.basename(config)).group(1)


def _metrics(model: dict) -> Dict[str, float]:
    found = {}
    for result in model.get('Results', []):
        assert set(result) == {'Task', 'Dataset', 'Metrics'}, result
        assert not set(found) & set(result['Metrics']), model['Name']
        found.update(result['Metrics'])
    return found


def test_index_imports_one_metafile_per_toolbox():
    assert sorted(_metafiles()) == sorted(f'configs/{t}/metafile.yml' for t in TOOLBOXES)


def test_every_model_points_at_files_that_exist():
    for meta, model in _models():
        assert osp.isfile(osp.join(ROOT, model['Config'])), (meta, model['Config'])
        assert osp.dirname(model['Config']) == osp.dirname(meta), model['Name']
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
    for meta in _metafiles():
        for collection in _yaml(meta)['Collections']:
            assert osp.isfile(osp.join(ROOT, collection['README'])), collection['README']
            assert collection['Paper'] == {'URL': PAPER_URL, 'Title': PAPER_TITLE}


def test_names_are_unique_and_every_model_has_its_collection():
    names = collections.Counter(model['Name'] for _, model in _models())
    assert not [n for n, count in names.items() if count > 1]
    collection_names = collections.Counter(c['Name'] for meta in _metafiles()
                                           for c in _yaml(meta)['Collections'])
    assert not [n for n, count in collection_names.items() if count > 1]
    for meta, model in _models():
        assert model['In Collection'] in {c['Name'] for c in _yaml(meta)['Collections']}


def test_every_config_is_in_exactly_one_metafile():
    configs = sorted(osp.relpath(p, ROOT) for t in TOOLBOXES
                     for p in glob.glob(osp.join(ROOT, 'configs', t, '*.py')))
    listed = collections.Counter(model['Config'] for _, model in _models())
    assert sorted(listed) == configs
    assert set(listed.values()) == {1}


def test_no_weights_are_claimed():
    # No DualFormer weights exist: neither a metafile nor a model page offers any.
    for meta in _metafiles():
        data = _yaml(meta)
        for entry in data['Collections'] + data['Models']:
            assert 'Weights' not in entry and 'Training log' not in entry, entry['Name']
    for toolbox in TOOLBOXES:
        for header, _ in _readme_tables(toolbox):
            assert not {'Download', 'Weights', 'Checkpoint'} & set(header), (toolbox, header)


def test_cost_is_the_papers():
    for meta, model in _models():
        table = COST[_toolbox(meta)]
        size = _size(model['Config'])
        metadata = model.get('Metadata', {})
        if size not in table:
            # The paper reports no model of this size for this task.
            assert 'Parameters' not in metadata and 'FLOPs' not in metadata, model['Name']
            assert 'Results' not in model, model['Name']
            continue
        params, gflops = table[size]
        assert metadata['Parameters'] == round(params * 1e6), model['Name']
        assert metadata['FLOPs'] == round(gflops * 1e9), model['Name']


# ------------------------------------------------------------------------ the model pages

def _readme_tables(toolbox: str) -> List[Tuple[List[str], List[List[str]]]]:
    """(header, rows) of every Markdown table of ``configs/<toolbox>/README.md``."""
    with open(osp.join(ROOT, 'configs', toolbox, 'README.md')) as f:
        lines = f.read().splitlines()
    tables, current = [], None
    for line in lines + ['']:
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if current is None:
                current = (cells, [])
            elif not all(re.fullmatch(r':?-+:?', c) for c in cells):
                current[1].append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    return tables


def _readme_rows(toolbox: str) -> Dict[str, Dict[str, str]]:
    """``{config path: {column: cell}}`` of the tables of a model page."""
    rows = {}
    for header, body in _readme_tables(toolbox):
        for cells in body:
            row = dict(zip(header, cells))
            link = re.fullmatch(r'\[config\]\(([^)]+\.py)\)', row['Config'])
            assert link, f'configs/{toolbox}/README.md: a row without a config link: {cells}'
            config = osp.normpath(osp.join('configs', toolbox, link.group(1)))
            assert config not in rows, config
            rows[config] = row
    return rows


def _number(cell: str) -> Optional[float]:
    return None if cell == '-' else float(cell)


@pytest.mark.parametrize('toolbox', TOOLBOXES)
def test_model_page_tables_are_the_metafile(toolbox):
    """Every row of a model page's tables is a model of its metafile with the same figures,
    and every model of the metafile has its row."""
    rows = _readme_rows(toolbox)
    models = {m['Config']: m for meta, m in _models() if _toolbox(meta) == toolbox}
    assert set(rows) == set(models)
    for config, row in rows.items():
        model = models[config]
        metrics = _metrics(model)
        metadata = model.get('Metadata', {})
        shown = {col: _number(cell) for col, cell in row.items()
                 if col not in ('Model', 'Backbone', 'Config', 'Params (M)', 'FLOPs (G)')}
        assert {k: v for k, v in shown.items() if v is not None} == metrics, config
        assert all(v is None for v in shown.values()) or shown.keys() == metrics.keys(), config
        params, flops = _number(row['Params (M)']), _number(row['FLOPs (G)'])
        assert (params and round(params * 1e6)) == metadata.get('Parameters'), config
        assert (flops and round(flops * 1e9)) == metadata.get('FLOPs'), config


# What a config's second line calls a metric, and the metafile's name for it.
HEADER_METRICS = {'top-1': 'Top 1 Accuracy', 'box AP': 'box AP', 'mask AP': 'mask AP',
                  'mIoU': 'mIoU'}


def _header_figures(config: str) -> Dict[str, float]:
    """The paper's figures line 2 of a config quotes (tests/test_recipes.py checks the line)."""
    with open(osp.join(ROOT, config)) as f:
        second = f.read().splitlines()[1]
    quoted = re.match(r"# Paper's figure, not reproduced here: (.+?) \(Table \d", second)
    assert quoted, (config, second)
    if quoted.group(1) == 'none':
        return {}
    figures = {}
    for item in quoted.group(1).split(', '):
        name, value = item.rsplit(' ', 1)
        figures[HEADER_METRICS[name]] = float(value.rstrip('%'))
    return figures


def test_metafile_figures_are_the_ones_the_configs_quote():
    for _, model in _models():
        figures = _header_figures(model['Config'])
        metrics = _metrics(model)
        assert figures == {k: metrics[k] for k in figures}, model['Name']
        assert bool(figures) == bool(metrics), model['Name']


def test_model_pages_cite_the_paper_as_citation_cff_does():
    with open(osp.join(ROOT, 'CITATION.cff')) as f:
        paper = yaml.safe_load(f)['preferred-citation']
    authors = ' and '.join(f"{a['family-names']}, {a['given-names']}" for a in paper['authors'])
    for toolbox in TOOLBOXES:
        with open(osp.join(ROOT, 'configs', toolbox, 'README.md')) as f:
            bibtex = re.search(r'```bibtex\n(@article\{.*?\n\})\n```', f.read(), re.S)
        assert bibtex, toolbox
        fields = dict(re.findall(r'^\s*(\w+)=\{(.*)\},?$', bibtex.group(1), re.M))
        assert fields == {'title': paper['title'], 'author': authors,
                          'journal': paper['journal'], 'year': str(paper['year'])}, toolbox


# ----------------------------------------------------------------- the toolboxes' parsers

def test_modelindex_reads_the_index():
    """``modelindex``, the parser of mim and mmpretrain, loads the index with every model, its
    collection's metadata merged in."""
    modelindex = pytest.importorskip('modelindex')
    index = modelindex.load(osp.join(ROOT, 'model-index.yml'))
    index.build_models_with_collections()
    ours = {model['Name']: model for _, model in _models()}
    assert sorted(m.name for m in index.models) == sorted(ours)
    for model in index.models:
        full = model.full_model
        assert full.config == ours[model.name]['Config']
        assert full.weights is None
        assert full.paper['URL'] == PAPER_URL
        assert full.metadata.training_data in ('ImageNet-1k', 'COCO', 'ADE20K')
        assert {k: v for r in model.results or [] for k, v in r.metrics.items()} == \
            _metrics(ours[model.name])


def test_mmpretrain_builds_a_classifier_by_its_model_index_name(monkeypatch):
    """mmpretrain's own model hub takes the index: ``get_model`` builds DualFormer-T from the
    name, and asking for pretrained weights says there are none."""
    apis = pytest.importorskip('mmpretrain.apis')
    # A copy of the hub's registry, so that the names leave with the test.
    monkeypatch.setattr(apis.ModelHub, '_models_dict', dict(apis.ModelHub._models_dict))
    apis.ModelHub.register_model_index(osp.join(ROOT, 'model-index.yml'), config_prefix=ROOT)
    assert apis.ModelHub.get('dualformer_t_in1k').config.model.backbone.arch == 't'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = apis.get_model('dualformer_t_in1k', pretrained=True)
    assert any('Unable to find pre-defined checkpoint' in str(w.message) for w in caught)
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__name__ == 'DualFormer'
    assert model.backbone.channels == [64, 128, 256, 320]  # DualFormer-T (Table 1)
