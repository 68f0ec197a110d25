# Copyright (c) dualformer-mm contributors.
"""Analyses of DualFormer that tools in ``tools/analysis`` run: :mod:`.ablation`, the
paper's Tables 5 and 6 trained side by side. ``import dualformer_mm`` does not import it.
"""
