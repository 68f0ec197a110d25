# Copyright (c) dualformer-mm contributors.
"""What a measurement or a figure was made with: the machine and the package versions.

The benchmarks, the ablation tables and the figures of the tools name their command, machine
and versions with these, so a number or a picture can be traced to how it was made.
"""
import datetime
import importlib.metadata
import os
import platform
from typing import Dict, Optional, Sequence

#: The packages a figure of this repository depends on, by distribution name.
FIGURE_PACKAGES = ('torch', 'mmengine', 'mmcv', 'dualformer_mm')


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``lscpu``'s Model name), else what
    :mod:`platform` knows.

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(package: str) -> Optional[str]:
    """The installed version of the distribution ``package``, or None.

    Args:
        package (str): A distribution name (``'mmsegmentation'``, not ``'mmseg'``).

    Example:
        >>> package_version('no-such-distribution') is None
        True
    """
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(packages: Sequence[str] = FIGURE_PACKAGES) -> Dict[str, Optional[str]]:
    """:func:`package_version` of each of ``packages``, in their order.

    Example:
        >>> list(package_versions(('torch', 'no-such-distribution')).values())[1] is None
        True
    """
    return {name: package_version(name) for name in packages}


def describe_run(command: str, packages: Sequence[str] = FIGURE_PACKAGES) -> str:
    """Two lines for a figure: the command, then the machine, the versions and the date.

    Args:
        command (str): What made the figure, e.g. ``'python tools/run_demo.py'``.
        packages (Sequence[str]): Distributions whose versions to name (the installed ones
            only). Defaults to :data:`FIGURE_PACKAGES`.

    Returns:
        str: ``'<command>\\n<CPU> (<n> cores); torch <v>, ...; <UTC date>'``.

    Example:
        >>> text = describe_run('python tools/run_demo.py', ('torch', ))
        >>> lines = text.splitlines()
        >>> lines[0], 'torch ' in lines[1], len(lines)
        ('python tools/run_demo.py', True, 2)
    """
    versions = ', '.join(f'{name} {version}' for name, version in
                         package_versions(packages).items() if version)
    date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
    return f'{command}\n{cpu_model()} ({os.cpu_count()} cores); {versions}; {date}'
