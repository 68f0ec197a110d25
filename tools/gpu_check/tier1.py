# Copyright (c) dualformer-mm contributors.
"""Tier 1 of the GPU check, first part: the environment, the build, the CUDA tests."""
import importlib
import importlib.metadata
import os
import os.path as osp
import platform
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional

from .common import ROOT, NEEDS_CUDA, Context, load_mmcv_wheels, result, run_logged, tail


def _has_distribution(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def step_environment(ctx: Context) -> Dict[str, Any]:
    """Versions, GPUs, and the flavours of mmcv and dualformer_mm._ext."""
    import torch
    figures: Dict[str, Any] = dict(
        python=platform.python_version(), torch=torch.__version__,
        torch_cuda=torch.version.cuda, gpus=[], torch_arch_list=torch.cuda.get_arch_list())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            figures['gpus'].append(f'{torch.cuda.get_device_name(i)} (sm_{major}{minor})')
    nvcc = shutil.which('nvcc')
    if nvcc:
        out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout
        match = re.search(r'release ([\d.]+)', out)
        figures['nvcc'] = match.group(1) if match else out.strip()[-60:]
    else:
        figures['nvcc'] = None
    for name, dist in (('mmengine', 'mmengine'), ('mmcv', None), ('mmpretrain', 'mmpretrain'),
                       ('mmdet', 'mmdet'), ('mmseg', 'mmsegmentation'), ('timm', 'timm')):
        # Installed versions from the metadata: importing the toolboxes here costs seconds.
        dists = [dist] if dist else ['mmcv', 'mmcv-lite']
        found = [f'{d} {importlib.metadata.version(d)}' for d in dists
                 if _has_distribution(d)]
        figures[name] = ', '.join(found) or 'not installed'
    flavours = load_mmcv_wheels().installed_flavours()
    figures['mmcv_ops'] = {'lite': 'none (mmcv-lite)', None: 'CPU only'}.get(
        flavours.get('mmcv_cuda'), f'CUDA {flavours.get("mmcv_cuda")}')
    figures['dualformer_ext_cuda'] = flavours.get('ext_cuda')
    return result('pass', figures)


def build_ext_command(ctx: Context) -> List[str]:
    """The compile of ``dualformer_mm._ext`` in place."""
    return [ctx.python, 'setup.py', 'build_ext', '--inplace']


def build_ext_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of the build: CUDA required, architectures of the visible GPU only.

    Example:
        >>> env = build_ext_env({'TORCH_CUDA_ARCH_LIST': '7.5;8.0'})
        >>> 'TORCH_CUDA_ARCH_LIST' in env, env['DUALFORMER_CUDA']
        (False, '1')
    """
    env = dict(os.environ if environ is None else environ)
    # The check builds for the GPU it runs on (the rule's second case), which also keeps the
    # build within the time budget; a user's TORCH_CUDA_ARCH_LIST would widen it.
    env.pop('TORCH_CUDA_ARCH_LIST', None)
    env['DUALFORMER_CUDA'] = '1'
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 1))
    return env


def step_build_ext(ctx: Context) -> Dict[str, Any]:
    """Compile the CPU and CUDA kernels for the visible GPU, then import them."""
    log = osp.join(ctx.log_dir(), 'build_ext.log')
    start = time.time()
    proc = run_logged(build_ext_command(ctx), log, timeout=420, env=build_ext_env())
    seconds = time.time() - start
    archs = re.findall(r'TORCH_CUDA_ARCH_LIST=(\S+)', tail(log, 200000))
    figures = dict(build_s=round(seconds, 1), archs=archs[-1] if archs else None)
    if proc.returncode != 0:
        return result('fail', figures, f'build failed (rc {proc.returncode}):\n{tail(log)}')
    # Imported here, in this step's own process, which has not loaded the extension before.
    try:
        ext = importlib.import_module('dualformer_mm._ext')
    except ImportError as err:
        return result('fail', figures, f'the built extension does not import: {err}')
    figures['with_cuda'] = bool(ext.with_cuda())
    if not figures['with_cuda']:
        return result('fail', figures, 'the built extension has no CUDA kernels')
    return result('pass', figures)


def cuda_test_files(root: str = ROOT) -> List[str]:
    """Test files with CUDA cases: those using ``tests.utils``' CUDA params or the marker."""
    pattern = re.compile(r'^from tests\.utils import [^\n]*\b(CUDA|DEVICES)\b|pytest\.mark\.cuda\b',
                         re.M)
    files = []
    for name in sorted(os.listdir(osp.join(root, 'tests'))):
        if name.startswith('test_') and name.endswith('.py'):
            with open(osp.join(root, 'tests', name)) as f:
                if pattern.search(f.read()):
                    files.append(osp.join('tests', name))
    return files


def junit_counts(path: str) -> Dict[str, int]:
    """Tests, failures, errors, skipped and passed in a ``pytest --junitxml`` file."""
    import xml.etree.ElementTree as ET
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    return counts


def step_cuda_tests(ctx: Context) -> Dict[str, Any]:
    """``pytest -m cuda`` on the files with CUDA cases (collection only in the dry run)."""
    files = cuda_test_files()
    log = osp.join(ctx.log_dir(), 'cuda_tests.log')
    base = [ctx.python, '-m', 'pytest', '-m', 'cuda', '-p', 'no:cacheprovider', *files]
    if ctx.dry_run:
        proc = run_logged(base + ['--collect-only', '-q'], log, timeout=300)
        # The last line reads "N/M tests collected (K deselected)".
        match = re.search(r'(\d+)(?:/\d+)? tests? collected', tail(log))
        figures = dict(files=files, collected=int(match.group(1)) if match else 0)
        if proc.returncode != 0 or not figures['collected']:
            return result('fail', figures, f'collection failed:\n{tail(log)}')
        return result(NEEDS_CUDA, figures, 'collected only')
    xml = osp.join(ctx.log_dir(), 'cuda_tests.xml')
    proc = run_logged(base + ['-q', f'--junitxml={xml}'], log, timeout=600)
    counts = junit_counts(xml) if osp.exists(xml) else {}
    figures = dict(files=files, **counts)
    ok = proc.returncode == 0 and counts.get('passed', 0) > 0
    return result('pass' if ok else 'fail', figures, '' if ok else tail(log),
                  target_met=ok and counts.get('skipped', 0) == 0)
