# Copyright (c) dualformer-mm contributors.
"""Benchmark of the partition ops of MHPA (paper section 3.2): fused extension vs reference.

Times forward+backward of each partition op, of the whole partition pipeline (hash, both
pools, importance weighting, distribution) and of one MHPA module at the stage-1 shapes of
DualFormer-T (64 channels, 32 of them for MHPA, 1 head, K = 8, k = 4):

* ``224x224 b32``: 32 groups of 14x14 = 196 tokens.
* ``800x1280 b1``: 1 group of 50x80 = 4000 tokens.

Both backends run in the same process, interleaved; the time is the median of ``--repeat``
runs. ``--profile`` also measures, with torch.profiler, the share of DualFormer-T's
forward+backward at 800x1280 spent in the partition ops with each backend.

Example:
    python tools/benchmarks/bench_ops.py                # table
    python tools/benchmarks/bench_ops.py --json         # list of {op, shape, device, ...}
    python tools/benchmarks/bench_ops.py --profile      # plus the DualFormer-T profile
"""
import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from dualformer_mm import DualFormer, ops
from dualformer_mm.models.backbones.dualformer import PartitionAttention

# name -> (batch, image height, image width); stage 1 is stride 4, MHPA downsamples by 4.
SHAPES = {'224x224 b32': (32, 224, 224), '800x1280 b1': (1, 800, 1280)}
DIMS, HEADS, PARTS, SR = 32, 1, 8, 4
PARTITION_OPS = ('lsh_hash', 'partition_softmax_pool', 'partition_mean', 'partition_distribute')


def sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def timeit(fn: Callable[[], None], device: str, repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_cases(shape: Tuple[int, int, int], device: str) -> Dict[str, Callable[[], None]]:
    """Forward+backward closures of every benchmarked op at one stage-1 shape."""
    batch, height, width = shape
    h, w = height // 4 // SR, width // 4 // SR
    g, n, d = batch * HEADS, h * w, DIMS // HEADS
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g, n, d, generator=gen).to(device).requires_grad_()
    v = torch.randn(g, n, d, generator=gen).to(device).requires_grad_()
    planes = torch.randn(d, 3, generator=gen).to(device)
    codes = ops.lsh_hash(x.detach(), planes)
    pooled = torch.randn(g, PARTS, 2 * d, generator=gen).to(device).requires_grad_()
    attn = PartitionAttention(DIMS, HEADS, num_partitions=PARTS, sr_ratio=SR).to(device)
    image = torch.randn(batch, DIMS, height // 4, width // 4, generator=gen).to(device)
    image.requires_grad_()

    def backward(out: Tensor) -> None:
        out.backward(torch.ones_like(out))

    def pipeline() -> None:
        # MHPA's partition branch from tokens to the distributed features, as in forward().
        with torch.no_grad():
            c = ops.lsh_hash(x, planes)
        soft = ops.partition_softmax_pool(x, v, c, PARTS)
        desc, counts = ops.partition_mean(v, c, PARTS)
        weight = (counts > 0).to(desc.dtype)
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-6)
        backward(ops.partition_distribute(torch.cat([soft, desc * weight.unsqueeze(-1)], -1), c))

    return {
        'lsh_hash': lambda: ops.lsh_hash(x.detach(), planes),
        'partition_softmax_pool': lambda: backward(ops.partition_softmax_pool(x, v, codes, PARTS)),
        'partition_mean': lambda: backward(ops.partition_mean(v, codes, PARTS)[0]),
        'partition_distribute': lambda: backward(ops.partition_distribute(pooled, codes)),
        'pipeline': pipeline,
        'mhpa': lambda: backward(attn(image)),
    }


def bench(device: str, repeat: int) -> List[Dict]:
    rows = []
    for shape_name, shape in SHAPES.items():
        cases = make_cases(shape, device)
        for op, fn in cases.items():
            ms = {}
            for backend in ('reference', 'ext'):
                with ops.use_backend(backend):
                    ms[backend] = timeit(fn, device, repeat)
            rows.append(dict(op=op, shape=shape_name, device=device, reference_ms=ms['reference'],
                             ext_ms=ms['ext'], speedup=ms['reference'] / ms['ext']))
    return rows


def profile_backbone(device: str, repeat: int) -> List[Dict]:
    """Share of DualFormer-T forward+backward at 800x1280 spent in partition ops.

    Forward: the time inside the op calls (each wrapped in a profiler range here, for both
    backends alike). Backward: the autograd nodes whose sequence number belongs to an op
    recorded inside those ranges, i.e. exactly the backward of the partition ops.
    """
    from torch.autograd.profiler import record_function
    originals = {name: getattr(ops, name) for name in PARTITION_OPS}

    def wrap(fn):
        def wrapped(*args, **kwargs):
            with record_function('partition_op'):
                return fn(*args, **kwargs)
        return wrapped

    model = DualFormer(arch='t', drop_path_rate=0.).to(device).train()
    x = torch.rand(1, 3, 800, 1280, device=device)
    rows = []
    for name in PARTITION_OPS:
        setattr(ops, name, wrap(originals[name]))
    try:
        for backend in ('reference', 'ext'):
            with ops.use_backend(backend):
                def step() -> None:
                    model.zero_grad(set_to_none=True)
                    sum(o.float().mean() for o in model(x)).backward()
                wall = timeit(step, device, repeat, warmup=1)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    with record_function('step'):
                        step()
            events = prof.events()
            step_ms = sum(e.cpu_time_total for e in events if e.name == 'step') / 1e3
            fwd = [e for e in events if e.name == 'partition_op']
            seqs = set()
            stack = list(fwd)
            while stack:
                e = stack.pop()
                if e.sequence_nr >= 0:
                    seqs.add(e.sequence_nr)
                stack.extend(e.cpu_children)
            bwd = [e for e in events if e.name.startswith('autograd::engine::evaluate_function')
                   and e.sequence_nr in seqs]
            fwd_ms = sum(e.cpu_time_total for e in fwd) / 1e3
            bwd_ms = sum(e.cpu_time_total for e in bwd) / 1e3
            rows.append(dict(backend=backend, step_ms=step_ms, wall_ms=wall,
                             partition_fwd_ms=fwd_ms, partition_bwd_ms=bwd_ms,
                             share=(fwd_ms + bwd_ms) / step_ms))
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--json', action='store_true', help='print a JSON list of results')
    parser.add_argument('--profile', action='store_true',
                        help='also profile DualFormer-T forward+backward at 800x1280')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if ops.load_extension() is None or not ops.extension_available(args.device):
        raise SystemExit(f'the extension cannot run on {args.device}: '
                         f'{ops._backend._missing(args.device)}')
    rows = bench(args.device, args.repeat)
    profile = profile_backbone(args.device, max(3, args.repeat // 5)) if args.profile else []
    if args.json:
        print(json.dumps(rows + [dict(op='dualformer_t_profile', shape='800x1280 b1',
                                      device=args.device, **p) for p in profile], indent=1))
        return
    print(f'device={args.device} threads={torch.get_num_threads()} repeat={args.repeat}')
    print(f'{"op":<24}{"shape":<14}{"reference ms":>14}{"ext ms":>10}{"speedup":>9}')
    for r in rows:
        print(f'{r["op"]:<24}{r["shape"]:<14}{r["reference_ms"]:>14.3f}{r["ext_ms"]:>10.3f}'
              f'{r["speedup"]:>8.2f}x')
    for p in profile:
        print(f'DualFormer-T 800x1280 fwd+bwd, {p["backend"]:>9}: step {p["step_ms"]:.1f} ms '
              f'(wall {p["wall_ms"]:.1f} ms), partition ops fwd {p["partition_fwd_ms"]:.1f} + '
              f'bwd {p["partition_bwd_ms"]:.1f} ms = {100 * p["share"]:.1f}%')
    if len(profile) == 2:
        print(f'whole backbone reference/ext: {profile[0]["wall_ms"] / profile[1]["wall_ms"]:.2f}x')


if __name__ == '__main__':
    main()
