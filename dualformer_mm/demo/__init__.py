"""The ``make demo`` pipeline: synthetic data, training and evaluation on three tasks."""
from .synthetic import CLASSES, SEG_CLASSES, class_names, make_demo_datasets

__all__ = ['CLASSES', 'SEG_CLASSES', 'class_names', 'make_demo_datasets']
