# Copyright (c) dualformer-mm contributors.
"""The paper's ablations (Tables 5 and 6) as runs of one shared budget, for
``tools/analysis/ablation.py``: the variant table (:mod:`.variants`), one training run
(:mod:`.runner`) and the result table (:mod:`.report`). Needs mmpretrain, imported when a run
starts.

Example:
    >>> from dualformer_mm.analysis.ablation import variants
    >>> variants.SETS['table6']
    ['full', 'kmeans']
    >>> variants.describe(variants.VARIANTS['serial'].options)
    "block_cfg.mode='serial'"
"""
