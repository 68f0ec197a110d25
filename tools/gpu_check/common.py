# Copyright (c) dualformer-mm contributors.
"""What every step of the GPU check shares: the run's context, a step's result, its logs."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
ROOT = osp.dirname(TOOLS)
NEEDS_CUDA = 'skipped: needs CUDA'


@dataclass
class Context:
    """What every step knows about the run."""

    dry_run: bool
    out: str
    device: str  # 'cuda', or 'cpu' for --dry-run
    num_gpus: int
    python: str = sys.executable

    def log_dir(self) -> str:
        path = osp.join(self.out, 'logs')
        os.makedirs(path, exist_ok=True)
        return path


@dataclass
class Step:
    """One check: its function runs in a child process and returns a result dict."""

    name: str
    tier: int
    title: str
    run: Callable[[Context], Dict[str, Any]]
    timeout: int  # seconds, on a GPU; the dry run has its own small sizes
    needs: Callable[[Context], Optional[str]] = field(
        default=lambda ctx: None)  # returns a skip reason, or None to run


def result(status: str, figures: Optional[Dict[str, Any]] = None, details: str = '',
           target_met: Optional[bool] = None) -> Dict[str, Any]:
    """A step's outcome: ``status`` is ``'pass'``, ``'fail'`` or ``'skipped: <why>'``.

    Example:
        >>> result('pass', dict(seconds=1.5))['status']
        'pass'
    """
    return dict(status=status, figures=figures or {}, details=details, target_met=target_met)


def child_env(*paths: str, **extra: str) -> Dict[str, str]:
    """This process's environment with ``paths``, ``tools/`` and the checkout first on
    ``PYTHONPATH``: what a child of the check imports (``gpu_check``, and
    ``dualformer_mm`` and ``tests`` from a checkout), plus ``extra`` variables."""
    entries = [*paths, TOOLS, ROOT]
    if os.environ.get('PYTHONPATH'):
        entries.append(os.environ['PYTHONPATH'])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(entries), **extra)


def run_logged(cmd: Sequence[str], log: str, timeout: int,
               env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root, its output appended to ``log``."""
    with open(log, 'a') as f:
        f.write(f'$ {" ".join(cmd)}\n')
        f.flush()
        return subprocess.run(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env, text=True)


def tail(path: str, chars: int = 3000) -> str:
    """The last ``chars`` characters of the file at ``path`` ('' when it cannot be read)."""
    try:
        with open(path, errors='replace') as f:
            return f.read()[-chars:]
    except OSError:
        return ''


def free_port() -> int:
    """A TCP port that is free now, for a launcher's rendezvous."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def load_tool_script(path: str):
    """The script ``tools/<path>`` loaded by its file as a module (once per process): a
    script is no package member, so its folder need not be on ``sys.path``."""
    name = '_gpu_check_' + osp.splitext(path)[0].replace('/', '_')
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_mmcv_wheels():
    """``tools/install/mmcv_wheels.py`` (how the install reads mmcv's and the extension's
    flavours) by its path: it is no package, and the check must report even where ``import
    dualformer_mm`` fails (no mmcv, a broken build)."""
    return load_tool_script('install/mmcv_wheels.py')
