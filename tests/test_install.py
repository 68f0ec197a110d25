"""The install: the CUDA architecture rule and toolkit choice of ``cuda_build.py``, the mmcv
flavour and its wheel cache key (``tools/install/mmcv_wheels.py``), the end-of-setup flavour
check, ``tools/setup_env.sh --print-plan``, what ``setup.py`` decides, and the sdist.

Nothing here compiles: the GPU cases of the rule get their torch queries passed in, toolkits
are fakes that only answer ``nvcc --version``, and the script is run only in its planning mode.
"""
import doctest
import importlib.util
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TORCH_ARCHS = ['sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120']


def _load_by_path(name, rel):
    """A build module as setup.py, setup_env.sh and gpu_check load it: by its file path."""
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


arch = _load_by_path('dualformer_cuda_build', 'cuda_build.py')
wheels = _load_by_path('_mmcv_wheels_under_test', osp.join('tools', 'install', 'mmcv_wheels.py'))


# ----------------------------------------------------------------------------- the arch rule

def test_user_arch_list_wins_over_gpu_and_torch():
    choice = arch.choose_archs({'TORCH_CUDA_ARCH_LIST': '8.6;9.0+PTX'}, [(8, 0)], TORCH_ARCHS)
    assert choice == arch.ArchChoice('8.6;9.0+PTX', 'user')


def test_visible_gpu_builds_for_that_gpu_only():
    assert arch.choose_archs({}, [(9, 0)], TORCH_ARCHS) == arch.ArchChoice('9.0', 'gpu')
    # Two kinds of GPU: both, once each, sorted.
    assert arch.choose_archs({}, [(9, 0), (8, 0), (9, 0)], TORCH_ARCHS).archs == '8.0;9.0'
    # A GPU newer than torch's newest architecture gets that one with PTX (driver JIT).
    assert arch.choose_archs({}, [(13, 0)], TORCH_ARCHS).archs == '12.0+PTX'


def test_no_gpu_builds_every_torch_arch_with_ptx_for_the_newest():
    choice = arch.choose_archs({}, [], TORCH_ARCHS)
    assert choice == arch.ArchChoice('7.5;8.0;8.6;9.0;10.0;12.0+PTX', 'torch')
    # PTX-only and arch-specific ('a') entries: no PTX for an 'a' target (it runs on no
    # newer GPU), so the newest plain architecture carries it.
    assert arch.choose_archs({}, [], ['sm_80', 'sm_90a', 'compute_90']).archs == \
        '8.0+PTX;9.0a'
    # A CPU-only torch lists none: nothing to build for.
    assert arch.choose_archs({}, [], []) is None


def test_empty_user_list_counts_as_unset_and_bad_entries_are_named():
    assert arch.choose_archs({'TORCH_CUDA_ARCH_LIST': ' '}, [(9, 0)], TORCH_ARCHS).source == 'gpu'
    with pytest.raises(ValueError, match=r"TORCH_CUDA_ARCH_LIST='9.0;sm_90'.*\['sm_90'\]"):
        arch.choose_archs({'TORCH_CUDA_ARCH_LIST': '9.0;sm_90'}, [], TORCH_ARCHS)
    assert arch.check_arch_list('Hopper 8.0') == ['Hopper', '8.0']


def test_rule_queries_the_installed_torch_by_default():
    choice = arch.choose_archs({})
    if torch.cuda.is_available():
        assert choice.source == 'gpu'
        assert arch.query_torch_arch_list() == torch.cuda.get_arch_list()
    elif torch.version.cuda is not None:
        # Without a GPU too (torch 2.1's get_arch_list() is empty then).
        assert choice.source == 'torch' and choice.archs.endswith('+PTX')
        assert len(choice.archs.split(';')) == len(
            [a for a in arch.query_torch_arch_list() if a.startswith('sm_')]) > 0
    else:
        assert choice is None


def test_docstring_examples():
    result = doctest.testmod(arch)
    assert result.failed == 0 and result.attempted >= 9
    result = doctest.testmod(wheels)
    assert result.failed == 0 and result.attempted >= 6


def test_sm_names():
    assert [arch.sm_to_arch(n) for n in ('sm_90', 'sm_100', 'sm_90a', 'compute_90', 'x')] == \
        ['9.0', '10.0', '9.0a', None, None]


@pytest.mark.parametrize('rel', ['cuda_build.py', osp.join('tools', 'install', 'mmcv_wheels.py')])
def test_build_modules_load_without_the_package_or_torch(rel):
    # setup.py runs before mmengine and mmcv exist: these modules must not import them, nor
    # dualformer_mm (whose __init__ needs both), nor torch at import time.
    path = osp.join(ROOT, rel)
    code = ('import importlib.util, sys; '
            f'spec = importlib.util.spec_from_file_location("m", {path!r}); '
            'm = importlib.util.module_from_spec(spec); sys.modules["m"] = m; '
            'spec.loader.exec_module(m); '
            'print(sorted(n for n in ("torch", "mmcv", "mmengine", "dualformer_mm") '
            'if n in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd='/', timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


# ------------------------------------------------------------- what setup.py decides

def _fake_toolkit(root, release):
    """A CUDA toolkit folder whose nvcc only answers ``--version`` with ``release``."""
    for sub in ('bin', 'lib64', 'include'):
        os.makedirs(root / sub, exist_ok=True)
    nvcc = root / 'bin' / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release '
                    f'{release}, V{release}.0"\n')
    nvcc.chmod(0o755)
    (root / 'lib64' / 'libcudart.so').write_bytes(b'')
    (root / 'include' / 'cusparse.h').write_text('')
    return str(root)


def _setup_log(env):
    """What ``python setup.py --name`` (no compile) says about the extension it would build."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ('CUDA_HOME', 'CUDA_PATH', 'TORCH_CUDA_ARCH_LIST', 'DUALFORMER_CUDA')}
    # No nvcc of the machine's own: only the fake toolkit (or none) is seen.
    environ['PATH'] = os.pathsep.join([osp.dirname(sys.executable), '/usr/bin', '/bin'])
    environ.update(env)
    return subprocess.run([sys.executable, 'setup.py', '--name'], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


def test_setup_builds_cuda_only_with_a_cuda_torch_and_a_matching_nvcc(tmp_path):
    major = int(torch.version.cuda.split('.')[0]) if torch.version.cuda else 12
    matching = _fake_toolkit(tmp_path / 'match', f'{major}.0')
    other = _fake_toolkit(tmp_path / 'other', f'{major + 1}.0')
    out = _setup_log({'CUDA_HOME': matching})
    assert out.returncode == 0, out.stderr[-2000:]
    if torch.version.cuda is None:
        assert f'building the CPU kernels only: torch {torch.__version__} is CPU-only' in \
            out.stderr
    else:
        # The architectures are the rule's (the same function the mmcv plan uses).
        assert (f'building CPU and CUDA kernels with CUDA_HOME={matching}, '
                f'TORCH_CUDA_ARCH_LIST={arch.choose_archs({}).describe()}') in out.stderr
    # Another CUDA major than torch's: CPU kernels and the reason, or an error when required.
    out = _setup_log({'CUDA_HOME': other})
    assert out.returncode == 0, out.stderr[-2000:]
    if torch.version.cuda is not None:
        assert (f'building the CPU kernels only: nvcc {major + 1}.0 at {other} does not match '
                f'torch {torch.__version__} (CUDA {torch.version.cuda})') in out.stderr
    required = _setup_log({'CUDA_HOME': other, 'DUALFORMER_CUDA': '1'})
    assert required.returncode != 0
    assert 'DUALFORMER_CUDA=1 but the CUDA kernels cannot be built: ' in required.stderr


def test_setup_without_toolkit_or_asked_for_cpu_says_why():
    out = _setup_log({})
    assert out.returncode == 0, out.stderr[-2000:]
    reason = (f'torch {torch.__version__} is CPU-only' if torch.version.cuda is None else
              'no CUDA toolkit (nvcc with libcudart) found')
    assert [line for line in out.stderr.splitlines() if 'building' in line] == \
        [f'[dualformer_mm setup] building the CPU kernels only: {reason}']
    assert out.stdout.strip().splitlines()[-1] == 'dualformer_mm'
    off = _setup_log({'DUALFORMER_CUDA': '0'})
    assert 'building the CPU kernels only: DUALFORMER_CUDA=0' in off.stderr
    bad = _setup_log({'DUALFORMER_CUDA': 'yes'})
    assert bad.returncode != 0
    assert "DUALFORMER_CUDA must be one of auto, 1, 0, got 'yes'" in bad.stderr


def test_extra_cuda_includes_add_only_what_the_toolkit_lacks(tmp_path):
    toolkit = tmp_path / 'cuda'
    (toolkit / 'include').mkdir(parents=True)
    (toolkit / 'include' / 'cuda_runtime.h').write_text('// 13.0')
    wheel = tmp_path / 'site' / 'cu13' / 'include'
    (wheel / 'cccl').mkdir(parents=True)
    for name in ('cuda_runtime.h', 'cusparse.h', 'cublas_v2.h'):
        (wheel / name).write_text('// 13.2')
    (folder, ) = arch.extra_cuda_includes(str(toolkit), [str(tmp_path / 'site')],
                                          str(tmp_path / 'shim'))
    # The wheel's copy of a header the toolkit has would shadow the toolkit's own.
    assert sorted(os.listdir(folder)) == ['cccl', 'cublas_v2.h', 'cusparse.h']
    assert osp.realpath(osp.join(folder, 'cusparse.h')) == str(wheel / 'cusparse.h')
    # Again (a second build): the same folder.
    assert arch.extra_cuda_includes(str(toolkit), [str(tmp_path / 'site')],
                                    str(tmp_path / 'shim')) == [folder]
    (toolkit / 'include' / 'cusparse.h').write_text('')
    assert arch.extra_cuda_includes(str(toolkit), [str(tmp_path / 'site')]) == []
    with pytest.raises(RuntimeError, match='cusparse.h is neither in the CUDA toolkit'):
        arch.extra_cuda_includes(str(tmp_path / 'bare'), [])


def test_extension_cuda_plan_cases():
    plan = arch.extension_cuda_plan
    assert plan('auto', '2.13.0+cu130', '13.0', '/cuda', '13.0') == \
        (True, 'nvcc 13.0 at /cuda, torch 2.13.0+cu130 (CUDA 13.0)')
    # Another minor of the same major is what torch's builder accepts (with a warning).
    assert plan('auto', '2.1.2+cu121', '12.1', '/cuda', '12.4')[0]
    assert plan('auto', '2.1.2+cu121', '12.1', '/cuda', '13.0') == \
        (False, 'nvcc 13.0 at /cuda does not match torch 2.1.2+cu121 (CUDA 12.1)')
    assert plan('auto', '2.1.2+cpu', None, '/cuda', '12.1') == \
        (False, 'torch 2.1.2+cpu is CPU-only')
    assert plan('0', '2.1.2+cu121', '12.1', '/cuda', '12.1') == (False, 'DUALFORMER_CUDA=0')
    with pytest.raises(RuntimeError, match='DUALFORMER_CUDA=1 but the CUDA kernels cannot be '
                       r'built: no CUDA toolkit \(nvcc with libcudart\) found'):
        plan('1', '2.1.2+cu121', '12.1', None, None)


# ------------------------------------------------------------------ flavour and cache key

def test_flavour_follows_the_gpu_unless_asked():
    cpu = wheels.mmcv_plan('2.13.0', 'cp311', {}, [], '13.0', TORCH_ARCHS)
    assert (cpu.flavour, cpu.cache_key, cpu.archs) == ('cpu', 'torch-2.13.0-cp311-cpu', None)
    assert 'DUALFORMER_MMCV_CUDA=1' in cpu.reason
    gpu = wheels.mmcv_plan('2.13.0', 'cp311', {}, [(9, 0)], '13.0', TORCH_ARCHS)
    assert (gpu.flavour, gpu.cache_key) == ('cuda', 'torch-2.13.0-cp311-cuda13.0-9.0')
    # A login node building for its GPU nodes: every torch architecture.
    login = wheels.mmcv_plan('2.13.0', 'cp311', {'DUALFORMER_MMCV_CUDA': '1'}, [], '13.0',
                           TORCH_ARCHS)
    assert login.flavour == 'cuda' and login.archs.source == 'torch'
    assert login.cache_key == 'torch-2.13.0-cp311-cuda13.0-7.5_8.0_8.6_9.0_10.0_12.0+PTX'
    # The user's list names the key too (sorted, so the order does not matter).
    user = wheels.mmcv_plan('2.13.0', 'cp311', {'DUALFORMER_MMCV_CUDA': '1',
                                              'TORCH_CUDA_ARCH_LIST': '9.0 8.0'}, [], '13.0')
    assert user.cache_key == 'torch-2.13.0-cp311-cuda13.0-8.0_9.0'
    forced = wheels.mmcv_plan('2.13.0', 'cp311', {'DUALFORMER_MMCV_CUDA': '0'}, [(9, 0)], '13.0')
    assert forced.flavour == 'cpu' and 'GPU is visible' in forced.reason


def test_cpu_and_cuda_wheels_never_share_a_cache_folder():
    keys = {wheels.mmcv_plan('2.13.0', 'cp311', env, gpus, '13.0', TORCH_ARCHS).cache_key
            for env, gpus in (({}, []), ({}, [(9, 0)]), ({}, [(8, 0)]),
                              ({'DUALFORMER_MMCV_CUDA': '1'}, []))}
    assert len(keys) == 4
    # Nor with the folder of the old layout (CPU wheels only), which the script migrates.
    assert wheels.legacy_cache_key('2.13.0', 'cp311') not in keys


def test_flavour_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"DUALFORMER_MMCV_CUDA must be one of auto, 1, 0, "
                       r"got 'yes'"):
        wheels.mmcv_plan('2.13.0', 'cp311', {'DUALFORMER_MMCV_CUDA': 'yes'}, [], '13.0')
    with pytest.raises(ValueError, match='CPU-only'):
        wheels.mmcv_plan('2.13.0', 'cp311', {'DUALFORMER_MMCV_CUDA': '1'}, [], None, [])


def _wheel(path, ext_bytes):
    with zipfile.ZipFile(path, 'w') as whl:
        whl.writestr('mmcv/__init__.py', '')
        if ext_bytes is not None:
            whl.writestr('mmcv/_ext.cpython-311-x86_64-linux-gnu.so', ext_bytes)
    return str(path)


def test_wheel_flavour_reads_the_linked_libraries(tmp_path):
    elf = b'\x7fELF' + b'\0' * 64
    cuda = _wheel(tmp_path / 'a.whl', elf + b'libc10.so\0libc10_cuda.so\0libcudart.so.13\0')
    cpu = _wheel(tmp_path / 'b.whl', elf + b'libc10.so\0libtorch_cpu.so\0')
    lite = _wheel(tmp_path / 'c.whl', None)
    assert [wheels.wheel_flavour(p) for p in (cuda, cpu, lite)] == ['cuda', 'cpu', 'lite']


def test_cached_wheel_lookup_migrates_the_old_cpu_folder_once(tmp_path):
    elf = b'\x7fELF' + b'\0' * 64
    legacy = tmp_path / 'torch-2.13.0-cp311'
    legacy.mkdir()
    _wheel(legacy / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl', elf + b'libtorch_cpu.so\0')
    args = ('torch-2.13.0-cp311', '2.1.0')
    cuda_key = 'torch-2.13.0-cp311-cuda13.0-9.0'
    # A CUDA plan never takes the old folder's (CPU) wheel: it builds.
    assert wheels.find_cached_wheel(str(tmp_path), cuda_key, 'cuda', *args) is None
    messages = []
    found = wheels.find_cached_wheel(str(tmp_path), 'torch-2.13.0-cp311-cpu', 'cpu', *args,
                                   log=messages.append)
    assert found == str(tmp_path / 'torch-2.13.0-cp311-cpu' /
                        'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    assert not legacy.exists() and len(messages) == 1 and 'moving' in messages[0]
    assert wheels.find_cached_wheel(str(tmp_path), 'torch-2.13.0-cp311-cpu', 'cpu', *args,
                                  log=messages.append) == found
    assert len(messages) == 1
    # A wheel of the wrong flavour in a folder is refused, not installed.
    (tmp_path / cuda_key).mkdir()
    _wheel(tmp_path / cuda_key / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl', elf)
    with pytest.raises(ValueError, match='has cpu ops but sits in the cache folder of the cuda'):
        wheels.find_cached_wheel(str(tmp_path), cuda_key, 'cuda', *args)


def test_installed_mmcv_flavour_matches_its_own_report():
    mmcv = pytest.importorskip('mmcv')
    flavours = wheels.installed_flavours()
    assert flavours['mmcv'] == mmcv.__version__
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError:
        assert flavours['mmcv_cuda'] == 'lite'
        return
    reported = get_compiling_cuda_version()
    assert flavours['mmcv_cuda'] == (None if reported == 'not available' else reported)


def test_gpu_machine_with_cpu_only_ops_fails_setup():
    cpu_mmcv = dict(mmcv='2.1.0', mmcv_cuda=None, ext_cuda='yes', gpus='H200 (sm_90)')
    lines, errors = wheels.check_install(cpu_mmcv, {})
    assert lines[0] == 'mmcv 2.1.0: CPU-only ops'
    assert len(errors) == 1 and 'mmcv has no CUDA ops' in errors[0] and 'RoIAlign' in errors[0]
    # Asked for explicitly, it is reported but accepted.
    assert wheels.check_install(cpu_mmcv, {'DUALFORMER_MMCV_CUDA': '0'})[1] == []
    no_ext = dict(cpu_mmcv, mmcv_cuda='13.0', ext_cuda='no')
    lines, errors = wheels.check_install(no_ext, {})
    assert lines[:2] == ['mmcv 2.1.0: CUDA ops (compiled with CUDA 13.0)',
                         'dualformer_mm._ext: CPU kernels only']
    assert len(errors) == 1 and 'dualformer_mm._ext has no CUDA kernels' in errors[0]
    good = dict(no_ext, ext_cuda='yes')
    assert wheels.check_install(good, {})[1] == []
    # Without a GPU, CPU-only builds are what was asked for.
    assert wheels.check_install(dict(cpu_mmcv, ext_cuda='no', gpus=''), {})[1] == []


# ------------------------------------------------------------------------ setup_env.sh

def _plan(env, timeout=120):
    environ = {k: v for k, v in os.environ.items()
               if k not in ('DUALFORMER_MMCV_CUDA', 'TORCH_CUDA_ARCH_LIST', 'CUDA_HOME',
                            'CUDA_PATH')}
    environ.update(VENV=sys.prefix, **env)
    return subprocess.run(['bash', osp.join(ROOT, 'tools', 'setup_env.sh'), '--print-plan'],
                          cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU default needs a machine '
                    'without a GPU')
def test_setup_plan_without_gpu_is_cpu_flavour():
    out = _plan({})
    assert out.returncode == 0, out.stderr
    assert re.search(r'flavour: cpu \(no CUDA GPU is visible', out.stdout)
    torch_version = torch.__version__.split('+')[0]
    pytag = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    assert f'wheels/torch-{torch_version}-{pytag}-cpu' in out.stdout


def test_setup_plan_cuda_flavour_on_request():
    if shutil.which('nvcc') is None or torch.version.cuda is None:
        pytest.skip('needs nvcc and a CUDA build of torch')
    out = _plan({'DUALFORMER_MMCV_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': '9.0;8.0'})
    assert out.returncode == 0, out.stderr
    assert 'flavour: cuda (DUALFORMER_MMCV_CUDA=1)' in out.stdout
    assert 'architectures: 9.0;8.0 (TORCH_CUDA_ARCH_LIST as set by the user)' in out.stdout
    assert re.search(rf'-cuda{re.escape(torch.version.cuda)}-8\.0_9\.0\n', out.stdout)
    assert re.search(r'CUDA toolkit: /\S+', out.stdout)


def test_setup_plan_errors():
    bad = _plan({'DUALFORMER_MMCV_CUDA': 'yes'})
    assert bad.returncode == 1
    assert "DUALFORMER_MMCV_CUDA must be one of auto, 1, 0, got 'yes'" in bad.stderr
    if torch.version.cuda is None or shutil.which('nvcc', path='/usr/bin:/bin'):
        return
    # The CUDA flavour without a toolkit in sight: the plan says what is missing.
    no_toolkit = _plan({'DUALFORMER_MMCV_CUDA': '1', 'PATH': '/usr/bin:/bin'})
    assert no_toolkit.returncode == 1
    assert 'no CUDA toolkit (nvcc with libcudart) was found' in no_toolkit.stderr


# An interpreter and a uv for the install scripts: each call is recorded (arguments, the
# requirement files it reads, the index settings it sees) and nothing is downloaded or built.
# `python -m venv DIR` makes DIR/bin/python and DIR/bin/uv, both this stand-in.
RECORDING_STANDIN = r"""#!{python}
import json, os, shutil, sys
args, tool = sys.argv[1:], os.path.basename(sys.argv[0])
requirements = []
for flag, value in zip(args, args[1:]):
    if flag in ('-r', '--requirement'):
        with open(value) as f:  # a file, or the pipe of a process substitution
            requirements += [line.strip() for line in f
                             if line.strip() and not line.lstrip().startswith('#')]
with open(os.environ['FAKE_CALLS'], 'a') as f:
    f.write(json.dumps(dict(tool=tool, args=args, requirements=requirements, env={{
        k: os.environ.get(k) for k in ('PIP_INDEX_URL', 'UV_INDEX_URL', 'UV_DEFAULT_INDEX',
                                       'PIP_EXTRA_INDEX_URL')}})) + '\n')
if tool == 'uv' or args[:2] in (['-m', 'pip'], ['-m', 'compileall']):
    pass  # uv --version answers nothing: the script installs uv with pip first
elif args == ['--version']:
    print('Python 3.11.0')
elif args[:2] == ['-m', 'venv']:
    os.makedirs(os.path.join(args[2], 'bin'))
    for name in ('python', 'uv'):
        shutil.copy(sys.argv[0], os.path.join(args[2], 'bin', name))
elif args[0].endswith('mmcv_wheels.py'):
    print({{'mmcv-plan': "MMCV_FLAVOUR=cpu\nMMCV_REASON='no GPU'\nMMCV_CACHE_KEY=key\n"
                        "MMCV_LEGACY_CACHE_KEY=old\nMMCV_ARCHS=''\nMMCV_ARCH_DESCRIPTION=''\n"
                        "MMCV_CUDA_HOME=''\nMMCV_CUDA_INCLUDES=''",
           'find-wheel': os.environ['FAKE_WHEEL'], 'check-install': ''}}[args[1]])
elif args[0] == '-c' and 'sysconfig' in args[1]:
    print(os.environ['FAKE_SITE'])
elif args[0] == '-':
    sys.stdin.read()
"""
# An option that names where packages come from, in a call or a requirement file.
INDEX_OPTIONS = re.compile(r'^(-i|-f|--index|--index-url|--extra-index-url|--default-index|'
                           r'--find-links)(=|$)|://')


@pytest.mark.parametrize('script', [['setup_env.sh'],
                                    [osp.join('install', 'compat_env.sh'), 'oldest'],
                                    [osp.join('install', 'compat_env.sh'), 'newest',
                                     '--toolboxes', '--editable']])
def test_setup_scripts_name_no_package_index(script, tmp_path):
    # The machine's pip and uv settings choose the index; the scripts never name one. Each
    # script runs its whole install against stand-ins for Python, pip and uv.
    standin = tmp_path / 'python'
    standin.write_text(RECORDING_STANDIN.format(python=sys.executable))
    standin.chmod(0o755)
    calls, wheel = tmp_path / 'calls.jsonl', str(tmp_path / 'mmcv-2.1.0-cp311-linux_x86_64.whl')
    (tmp_path / 'site').mkdir()
    index = 'https://index.example/simple'  # the machine's own setting, passed through
    env = dict(os.environ, PYTHON=str(standin), VENV=str(tmp_path / 'venv'),
               COMPAT_VENVS=str(tmp_path / 'compat'), DUALFORMER_CACHE=str(tmp_path / 'cache'),
               FAKE_CALLS=str(calls), FAKE_WHEEL=wheel, FAKE_SITE=str(tmp_path / 'site'),
               MAX_JOBS='1', PIP_INDEX_URL=index, UV_INDEX_URL=index)
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', script[0]), *script[1:]],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    installs = [c for c in recorded if 'install' in c['args']]
    for call in recorded:
        named = [a for a in call['args'] + call['requirements'] if INDEX_OPTIONS.search(a)]
        assert not named, (call['tool'], call['args'])
        # Neither set nor cleared: what the machine says reaches pip and uv.
        assert call['env']['PIP_INDEX_URL'] == call['env']['UV_INDEX_URL'] == index, call
    # The calls that install (uv, then the pip of the README's command for a corner) ran.
    assert any(c['tool'] == 'python' and c['args'][:3] == ['-m', 'pip', 'install'] and
               any(a.startswith('uv==') for a in c['args']) for c in installs)
    packages = [r for c in installs if c['tool'] == 'uv' for r in c['args'] + c['requirements']]
    assert any(p.startswith('torch==') for p in packages), packages
    if script == ['setup_env.sh'] or '--toolboxes' in script:  # an mmcv pin: its wheel
        assert wheel in packages  # the one build_mmcv.sh found for the plan
    if script == ['setup_env.sh']:
        assert any(c['tool'] == 'uv' and c['args'][-2:] == ['-e', ROOT] for c in installs)
    else:
        (readme, ) = [c for c in installs if c['tool'] == 'python' and '.' in c['args']]
        assert readme['args'][:4] == ['-m', 'pip', 'install', '-v'] and \
            '--no-build-isolation' in readme['args']


def test_bytecode_is_written_for_every_package_even_where_python_writes_none(tmp_path):
    # A venv whose site-packages holds a package, a module and a file that cannot compile (as
    # torch ships one in Python 3.12 syntax), compiled with PYTHONDONTWRITEBYTECODE set (as CI
    # images set it).
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(tmp_path / 'v')],
                   check=True, timeout=120)
    vpy = str(tmp_path / 'v' / 'bin' / 'python')
    site = subprocess.run([vpy, '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(osp.join(site, 'pkg', 'sub'))
    sources = [osp.join(site, 'pkg', '__init__.py'), osp.join(site, 'pkg', 'sub', 'mod.py'),
               osp.join(site, 'single.py')]
    for path in sources:
        with open(path, 'w') as f:
            f.write('X = 1\n')
    newer = osp.join(site, 'pkg', 'newer.py')
    with open(newer, 'w') as f:
        f.write('def f(x: int) -> int:\n    return x\nmatch = (\n')  # cannot compile
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'install', 'compile_bytecode.sh'), vpy],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == '', proc.stdout + proc.stderr

    def cached(path):
        return subprocess.run([vpy, '-c', 'import importlib.util, sys; '
                               'print(importlib.util.cache_from_source(sys.argv[1]))', path],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert all(osp.isfile(cached(p)) for p in sources)
    assert not osp.exists(cached(newer))
    # A second run finds nothing to write: the files keep their times.
    times = [os.stat(cached(p)).st_mtime_ns for p in sources]
    subprocess.run(['bash', osp.join(ROOT, 'tools', 'install', 'compile_bytecode.sh'), vpy],
                   env=env, check=True, timeout=120)
    assert [os.stat(cached(p)).st_mtime_ns for p in sources] == times


@pytest.mark.skipif(not osp.isfile(osp.join(sys.prefix, '.dualformer-setup')),
                    reason="checks the venv of make setup")
def test_make_setup_venv_holds_the_bytecode_of_its_packages():
    import mmengine
    for module in (torch, torch.nn.functional, mmengine):
        assert osp.isfile(importlib.util.cache_from_source(module.__file__)), module.__name__


# An interpreter for build_mmcv.sh: answers mmcv_wheels.py and torch's questions as an
# environment of torch FAKE_TORCH would, and records each pip call (arguments, the settings pip
# would read, the setup.py it builds) instead of downloading or compiling anything.
FAKE_PYTHON = r"""#!{python}
import io, json, os, sys, tarfile
args, calls = sys.argv[1:], os.environ['FAKE_CALLS']
if args[0].endswith('mmcv_wheels.py'):
    print({{'mmcv-plan': "MMCV_FLAVOUR=cpu\nMMCV_REASON='no GPU'\nMMCV_CACHE_KEY=key\n"
                        "MMCV_LEGACY_CACHE_KEY=old\nMMCV_ARCHS=''\nMMCV_ARCH_DESCRIPTION=''\n"
                        "MMCV_CUDA_HOME=''\nMMCV_CUDA_INCLUDES=''",
           'find-wheel': '', 'wheel-flavour': 'cpu'}}[args[1]])
elif args[0] == '-c':
    print(os.environ['FAKE_TORCH'] if '__version__' in args[1] else os.environ['FAKE_ATEN'])
else:
    assert args[:2] == ['-m', 'pip'], args
    source = next((a for a in args if a.startswith(('mmcv==', '/'))), None)
    setup = os.path.join(source, 'setup.py') if source.startswith('/') else None
    with open(calls, 'a') as f:
        f.write(json.dumps(dict(
            args=args[2:], setup=open(setup).read() if setup else None,
            env={{k: os.environ.get(k) for k in ('PIP_CONFIG_FILE', 'PIP_FIND_LINKS',
                                                'FORCE_CUDA', 'MMCV_WITH_OPS')}})) + '\n')
    out = args[args.index('-d' if args[2] == 'download' else '-w') + 1]
    os.makedirs(out, exist_ok=True)
    if args[2] == 'download':
        text = b"extra_compile_args = {{'cxx': ['-std=c++17']}}  # and '-std=c++14'\n"
        with tarfile.open(os.path.join(out, 'mmcv-2.1.0.tar.gz'), 'w:gz') as tar:
            info = tarfile.TarInfo('mmcv-2.1.0/setup.py')
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    else:
        open(os.path.join(out, 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl'), 'w').close()
"""


@pytest.mark.parametrize('torch_version,cxx20', [('2.13.0', False), ('2.14.1', True)])
def test_mmcv_build_reads_no_pip_setting_and_raises_the_standard_torch_needs(
        torch_version, cxx20, tmp_path):
    python, calls, aten = tmp_path / 'python', tmp_path / 'calls.jsonl', tmp_path / 'ATen.h'
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    aten.write_text('#error C++20 or later compatible compiler is required to use ATen.\n'
                    if cxx20 else '#pragma once\n')
    env = dict(os.environ, FAKE_CALLS=str(calls), FAKE_TORCH=torch_version, FAKE_ATEN=str(aten),
               DUALFORMER_CACHE=str(tmp_path / 'cache'), PIP_FIND_LINKS=str(tmp_path / 'local'),
               PIP_CONFIG_FILE=str(tmp_path / 'pip.conf'))
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'install', 'build_mmcv.sh'),
                             str(python), '2.1.0'], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    # The wheel's path is the last line of stdout, in the cache folder of the plan's key.
    wheel = result.stdout.strip().splitlines()[-1]
    assert wheel == str(tmp_path / 'cache' / 'wheels' / 'key' /
                        'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl') and osp.exists(wheel)
    pips = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [p['args'][0] for p in pips] == (['download'] if cxx20 else []) + ['wheel']
    for pip in pips:
        # No config file, no local wheel folder, no wheel pip built earlier (of either flavour).
        assert pip['env']['PIP_CONFIG_FILE'] == '/dev/null' and pip['env']['PIP_FIND_LINKS'] is None
        assert '--no-cache-dir' in pip['args']
        assert not [a for a in pip['args'] if '://' in a or a.endswith('index-url')]
    build = pips[-1]
    assert build['env']['FORCE_CUDA'] == '0' and build['env']['MMCV_WITH_OPS'] == '1'
    assert {'--no-build-isolation', '--no-binary'} <= set(build['args'])
    if cxx20:  # the unpacked sdist, its setup.py asking for C++20
        assert build['setup'] == \
            "extra_compile_args = {'cxx': ['-std=c++20']}  # and '-std=c++20'\n"
        assert 'needs C++20' in result.stderr
    else:  # the sdist as published
        assert build['setup'] is None and 'mmcv==2.1.0' in build['args']


# ------------------------------------------------------------------------------- sdist

def _include_targets(path, text):
    return [osp.normpath(osp.join(osp.dirname(path), inc))
            for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, re.M)]


def test_sdist_holds_every_source_the_extension_needs(tmp_path):
    # A copy of the checkout's source files (tracked and new, not ignored): the sdist must
    # not write its egg-info into the working tree.
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / 'src'
    for rel in listed:
        if osp.isfile(osp.join(ROOT, rel)):
            os.makedirs(src / osp.dirname(rel), exist_ok=True)
            shutil.copy2(osp.join(ROOT, rel), src / rel)
    # DUALFORMER_CUDA=0: the CUDA sources are not extension sources then, so only
    # package_data can carry them; sdist compiles nothing either way.
    env = dict(os.environ, DUALFORMER_CUDA='0')
    out = subprocess.run([sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'd')],
                         cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(src.rglob('*.o')) and not list(src.rglob('*.so'))
    (archive, ) = (tmp_path / 'd').glob('dualformer_mm-*.tar.gz')
    with tarfile.open(archive) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
        members = {n.split('/', 1)[1]: tar.extractfile(n).read().decode(errors='replace')
                   for n in tar.getnames() if n.endswith(('.h', '.cpp', '.cu', '.cuh'))}
    csrc = osp.join('dualformer_mm', 'ops', 'csrc')
    needed = sorted(osp.relpath(osp.join(d, f), src) for d, _, files in os.walk(src / csrc)
                    for f in files if f.endswith(('.h', '.cpp', '.cu', '.cuh')))
    assert any(n.endswith('.cu') for n in needed) and any(
        n.startswith(osp.join(csrc, 'cpu')) and n.endswith('.h') for n in needed)
    # The release files, and every config with the model pages and metafiles that
    # model-index.yml imports.
    release = ['LICENSE', 'CITATION.cff', 'CHANGELOG.md', 'model-index.yml',
               osp.join('dualformer_mm', 'version.py')] + \
        [rel for rel in listed if rel.startswith('configs' + os.sep)]
    assert osp.join('configs', 'mmdet', 'metafile.yml') in release
    missing = [n for n in needed + ['setup.py', 'cuda_build.py'] + release if n not in names]
    assert not missing, f'the sdist lacks {missing}'
    # Every quoted #include of every source resolves inside the sdist.
    unresolved = [(p, t) for p, text in members.items() for t in _include_targets(p, text)
                  if t not in names]
    assert not unresolved, unresolved
