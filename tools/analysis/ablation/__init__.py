# Copyright (c) dualformer-mm contributors.
"""Pieces of ``tools/analysis/ablation.py``: the variant table (:mod:`.variants`), one training
run (:mod:`.runner`) and the result table (:mod:`.report`)."""
