# Copyright (c) dualformer-mm contributors.
"""``python -m gpu_check`` with ``tools/`` on ``PYTHONPATH``, as ``tools/gpu_check.sh`` runs it."""
import sys

from .run import main

sys.exit(main())
