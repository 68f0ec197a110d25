# Copyright (c) dualformer-mm contributors.
"""Errors that the benchmark scripts report in one line, without a traceback."""
import os.path as osp
import sys
from typing import Callable


class BenchmarkError(Exception):
    """A problem with the user's request that the scripts report without a traceback."""


def describe_import_error(err: BaseException) -> str:
    """``'ModuleNotFoundError: No module named ...'``, on one line.

    Example:
        >>> describe_import_error(ImportError('no mmdet here\\nmore'))
        'ImportError: no mmdet here'
    """
    return f'{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ""}'


def run_main(main: Callable[[], int]) -> None:
    """Run a script's ``main``, turning a :class:`BenchmarkError` into a clean exit 2."""
    try:
        sys.exit(main())
    except BenchmarkError as err:
        print(f'{osp.basename(sys.argv[0])}: error: {err}', file=sys.stderr)
        sys.exit(2)
