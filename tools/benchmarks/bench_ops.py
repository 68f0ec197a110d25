# Copyright (c) dualformer-mm contributors.
"""Benchmark of the partition ops of MHPA (paper section 3.2): fused extension vs reference.

Times forward+backward of each partition op, of the whole partition pipeline (hash, both
pools, importance weighting, distribution) and of one MHPA module at the stage-1 shapes of
DualFormer-T (64 channels, 32 of them for MHPA, 1 head, K = 8, k = 4):

* ``224x224 b32``: 32 groups of 14x14 = 196 tokens.
* ``800x1280 b1``: 1 group of 50x80 = 4000 tokens.

Both backends run in the same process, taking turns call by call; the time is the median
of ``--repeat`` runs. ``--split`` adds the forward and the backward of each differentiable op
on their own. ``--profile`` also measures, with torch.profiler, the share of DualFormer-T's
forward+backward at 800x1280 spent in the partition ops with each backend.

With ``--device cuda`` (or ``--bandwidth`` on any device) it also reports the memory
bandwidth of the fused softmax-pool forward: the bytes the op must move at least (its scores,
values and codes read once, the pooled output written once) over its time, as a fraction of
the bandwidth of a device-to-device copy of a buffer of as many bytes as its inputs, timed in
the same run (``torch.cuda.Event`` on CUDA, ``time.perf_counter`` on CPU). The project's target
on a GPU is at least 60% of the copy.

Example:
    python tools/benchmarks/bench_ops.py                # table
    python tools/benchmarks/bench_ops.py --json         # list of {op, shape, device, ...}
    python tools/benchmarks/bench_ops.py --split        # plus forward and backward rows
    python tools/benchmarks/bench_ops.py --profile      # plus the DualFormer-T profile
    python tools/benchmarks/bench_ops.py --device cuda  # plus the softmax-pool bandwidth
"""
import argparse
import contextlib
import json
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from dualformer_mm.benchmark.measure import time_interleaved
from dualformer_mm.benchmark.options import Settings
from dualformer_mm import DualFormer, ops
from dualformer_mm.models import PartitionAttention

# name -> (batch, image height, image width); stage 1 is stride 4, MHPA downsamples by 4.
SHAPES = {'224x224 b32': (32, 224, 224), '800x1280 b1': (1, 800, 1280)}
DIMS, HEADS, PARTS, SR = 32, 1, 8, 4
PARTITION_OPS = ('lsh_hash', 'partition_softmax_pool', 'partition_mean', 'partition_distribute')
# The bandwidth rows add a shape whose tensors (16 MB each) are no longer launch-bound.
BANDWIDTH_SHAPES = dict(SHAPES, **{'800x1280 b32': (32, 800, 1280)})


def timeit(fn: Callable[[], None], device: str, repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn``."""
    return timeit_backends({'': fn}, device, repeat, warmup)['']


def timeit_backends(fns: Dict[str, Callable[[], None]], device: str, repeat: int,
                    warmup: int = 3) -> Dict[str, float]:
    """Median milliseconds of each ``fns[backend]`` run under that op backend (``''``: as set).

    :func:`dualformer_mm.benchmark.measure.time_interleaved` lets the backends take turns call
    by call (alternating which goes first), so a slow spell of a shared machine lands on both
    instead of on whichever ran during it.
    """
    settings = Settings(device=device, threads=torch.get_num_threads(), amp=False,
                        amp_dtype=None, channels_last=False, compile=False,
                        warmup=warmup, repeat=repeat, iters=1)
    times, errors = time_interleaved(
        fns, settings,
        context=lambda name: ops.use_backend(name) if name else contextlib.nullcontext())
    if errors:
        raise RuntimeError(f'benchmarked call failed: {errors}')
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def make_inputs(shape: Tuple[int, int, int], device: str) -> Dict[str, Tensor]:
    """Stage-1 tokens, values, planes, codes and partition features at one image shape."""
    batch, height, width = shape
    h, w = height // 4 // SR, width // 4 // SR
    g, n, d = batch * HEADS, h * w, DIMS // HEADS
    gen = torch.Generator().manual_seed(0)
    # MHPA hashes (B, heads, n, d) tokens with per-head planes, then pools (B*heads, n, d).
    x = torch.randn(g, n, d, generator=gen).to(device).requires_grad_()
    v = torch.randn(g, n, d, generator=gen).to(device).requires_grad_()
    planes = torch.randn(HEADS, d, 3, generator=gen).to(device)
    codes = ops.lsh_hash(x.detach().view(batch, HEADS, n, d), planes).view(g, n)
    pooled = torch.randn(g, PARTS, 2 * d, generator=gen).to(device).requires_grad_()
    return dict(x=x, v=v, planes=planes, codes=codes, pooled=pooled)


def make_cases(shape: Tuple[int, int, int], device: str) -> Dict[str, Callable[[], None]]:
    """Forward+backward closures of every benchmarked op at one stage-1 shape."""
    batch, height, width = shape
    t = make_inputs(shape, device)
    x, v, planes, codes, pooled = t['x'], t['v'], t['planes'], t['codes'], t['pooled']
    tokens = x.detach().view(batch, HEADS, -1, x.shape[-1])
    gen = torch.Generator().manual_seed(1)
    # Channels-last weights and feature map, as DualFormer runs its blocks by default.
    attn = PartitionAttention(DIMS, HEADS, num_partitions=PARTS, sr_ratio=SR).to(
        device, memory_format=torch.channels_last)
    image = torch.randn(batch, DIMS, height // 4, width // 4, generator=gen).to(
        device, memory_format=torch.channels_last)
    image.requires_grad_()

    grads: Dict[Tuple, Tensor] = {}

    def backward(out: Tensor, *leaves: Tensor) -> None:
        # The upstream gradient is made once per shape: allocating and filling it is not the
        # op's work (and a fresh 1.6 MB buffer per call added allocator noise to both sides).
        key = (tuple(out.shape), out.dtype)
        if key not in grads:
            grads[key] = torch.ones_like(out)
        # The leaves' gradients are set to None first, as a training step's
        # zero_grad(set_to_none=True) does: otherwise every call after the first adds its
        # gradient into the old one, an extra pass over each input that is the benchmark's
        # work, not the op's (in MHPA the ops' inputs are activations, which never accumulate).
        for leaf in leaves:
            leaf.grad = None
        out.backward(grads[key])

    def mhpa() -> None:
        attn.zero_grad(set_to_none=True)
        backward(attn(image), image)

    def pipeline() -> None:
        # MHPA's partition branch from tokens to the distributed features, as in forward().
        with torch.no_grad():
            c = ops.lsh_hash(tokens, planes).view(codes.shape)
        soft = ops.partition_softmax_pool(x, v, c, PARTS)
        desc, counts = ops.partition_mean(v, c, PARTS)
        weight = (counts > 0).to(desc.dtype)
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-6)
        backward(ops.partition_distribute(torch.cat([soft, desc * weight.unsqueeze(-1)], -1), c),
                 x, v)

    return {
        'lsh_hash': lambda: ops.lsh_hash(tokens, planes),
        'partition_softmax_pool': lambda: backward(
            ops.partition_softmax_pool(x, v, codes, PARTS), x, v),
        'partition_mean': lambda: backward(ops.partition_mean(v, codes, PARTS)[0], v),
        'partition_distribute': lambda: backward(ops.partition_distribute(pooled, codes), pooled),
        'pipeline': pipeline,
        'mhpa': mhpa,
    }


# The differentiable ops: their inputs that take a gradient, and the call.
DIFFERENTIABLE = {
    'partition_softmax_pool': (('x', 'v'), lambda t: ops.partition_softmax_pool(
        t['x'], t['v'], t['codes'], PARTS)),
    'partition_mean': (('v',), lambda t: ops.partition_mean(t['v'], t['codes'], PARTS)[0]),
    'partition_distribute': (('pooled',), lambda t: ops.partition_distribute(
        t['pooled'], t['codes'])),
}


def bench_split(shape_name: str, device: str, repeat: int) -> List[Dict]:
    """Forward alone and backward alone of each differentiable op (``--split``).

    The forward runs without autograd; the backward is ``torch.autograd.grad`` of an output
    made once per backend (``retain_graph``), so it times the backward kernels and the autograd
    engine, not the forward.
    """
    t = make_inputs(SHAPES[shape_name], device)
    rows = []
    for op, (names, call) in DIFFERENTIABLE.items():
        with torch.no_grad():
            fwd = timeit_backends({b: lambda: call(t) for b in ('reference', 'ext')}, device,
                                  repeat)
        bwd_fns = {}
        for backend in ('reference', 'ext'):
            with ops.use_backend(backend):
                out = call(t)
            grad = torch.ones_like(out)
            bwd_fns[backend] = (lambda out=out, grad=grad: torch.autograd.grad(
                out, [t[name] for name in names], grad, retain_graph=True))
        bwd = timeit_backends(bwd_fns, device, repeat)
        for part, ms in (('forward', fwd), ('backward', bwd)):
            rows.append(dict(op=f'{op}:{part}', shape=shape_name, device=device,
                             reference_ms=ms['reference'], ext_ms=ms['ext'],
                             speedup=ms['reference'] / ms['ext']))
    return rows


def launch_cost(device: str, repeat: int) -> float:
    """Milliseconds of the smallest forward+backward from Python: a 1-element multiply.

    Every forward+backward row pays this once (``Tensor.backward`` in Python and the autograd
    engine's start), whatever the op; a training step pays it once for the whole model.
    """
    leaf = torch.ones(1, device=device, requires_grad=True)
    grad = torch.ones(1, device=device)

    def step() -> None:
        leaf.grad = None
        (leaf * 2).backward(grad)
    return timeit(step, device, repeat)


def device_time_ms(fn: Callable[[], None], device: str, repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn``: CUDA events around each call on CUDA, wall time on CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if device == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(samples)


def bandwidth_fraction(op_bytes: int, op_ms: float, copy_bytes: int, copy_ms: float) -> float:
    """The op's bandwidth as a fraction of the copy's: ``(op_bytes / op_ms) / (copy_bytes /
    copy_ms)``, where ``copy_bytes`` counts what the copy reads and writes.

    Example:
        >>> bandwidth_fraction(op_bytes=300, op_ms=2.0, copy_bytes=400, copy_ms=2.0)
        0.75
    """
    if min(op_bytes, op_ms, copy_bytes, copy_ms) <= 0:
        raise ValueError(f'bytes and times must be > 0, got {op_bytes}, {op_ms}, {copy_bytes}, '
                         f'{copy_ms}')
    return (op_bytes / op_ms) / (copy_bytes / copy_ms)


def softmax_pool_bandwidth(shape_name: str, device: str, repeat: int) -> Dict:
    """Bandwidth of the fused softmax-pool forward against a copy of as many bytes.

    The op's bytes are the least it can move: scores, values and codes read once and the
    pooled output written once. The copy is ``dst.copy_(src)`` of a byte buffer the size of
    the op's inputs, so it reads and writes twice that.

    Args:
        shape_name (str): A key of :data:`BANDWIDTH_SHAPES`.
        device (str): ``'cuda'``, or ``'cpu'`` (the same arithmetic, for testing).
        repeat (int): Timed calls of each; the median counts.

    Returns:
        Dict: ``op`` (``'partition_softmax_pool:bandwidth'``), ``shape``, ``device``,
        ``op_bytes``, ``op_ms``, ``op_gbps``, ``copy_bytes``, ``copy_ms``, ``copy_gbps``
        and ``fraction`` (``op_gbps / copy_gbps``).
    """
    t = make_inputs(BANDWIDTH_SHAPES[shape_name], device)
    x, v, codes = t['x'].detach(), t['v'].detach(), t['codes']
    in_bytes = x.nbytes + v.nbytes + codes.nbytes
    with torch.no_grad(), ops.use_backend('ext'):
        out_bytes = ops.partition_softmax_pool(x, v, codes, PARTS).nbytes
        op_ms = device_time_ms(lambda: ops.partition_softmax_pool(x, v, codes, PARTS), device,
                               repeat)
    src = torch.empty(in_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = device_time_ms(lambda: dst.copy_(src), device, repeat)
    op_bytes, copy_bytes = in_bytes + out_bytes, 2 * in_bytes
    return dict(op='partition_softmax_pool:bandwidth', shape=shape_name, device=device,
                op_bytes=op_bytes, op_ms=op_ms, op_gbps=op_bytes / op_ms / 1e6,
                copy_bytes=copy_bytes, copy_ms=copy_ms, copy_gbps=copy_bytes / copy_ms / 1e6,
                fraction=bandwidth_fraction(op_bytes, op_ms, copy_bytes, copy_ms))


def bench(device: str, repeat: int, split: bool = False) -> List[Dict]:
    rows = []
    for shape_name, shape in SHAPES.items():
        cases = make_cases(shape, device)
        for op, fn in cases.items():
            ms = timeit_backends({'reference': fn, 'ext': fn}, device, repeat)
            rows.append(dict(op=op, shape=shape_name, device=device, reference_ms=ms['reference'],
                             ext_ms=ms['ext'], speedup=ms['reference'] / ms['ext']))
        if split:
            rows.extend(bench_split(shape_name, device, repeat))
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
                cpu = torch.profiler.ProfilerActivity.CPU
                with torch.profiler.profile(activities=[cpu]) as prof:
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
    parser.add_argument('--split', action='store_true',
                        help='also time the forward and the backward of each op on their own')
    parser.add_argument('--bandwidth', action='store_true',
                        help='also measure the softmax-pool bandwidth against a copy (always '
                        'on with --device cuda)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if ops.load_extension() is None or not ops.extension_available(args.device):
        raise SystemExit(f'the extension cannot run on {args.device}: '
                         f'{ops._backend._missing(args.device)}')
    rows = bench(args.device, args.repeat, args.split)
    bandwidth = [softmax_pool_bandwidth(name, args.device, args.repeat)
                 for name in BANDWIDTH_SHAPES] if args.bandwidth or args.device == 'cuda' else []
    profile = profile_backbone(args.device, max(3, args.repeat // 5)) if args.profile else []
    if args.json:
        print(json.dumps(rows + bandwidth + [dict(op='dualformer_t_profile', shape='800x1280 b1',
                                                  device=args.device, **p) for p in profile],
                         indent=1))
        return
    print(f'device={args.device} threads={torch.get_num_threads()} repeat={args.repeat}')
    print(f'{"op":<32}{"shape":<14}{"reference ms":>14}{"ext ms":>10}{"speedup":>9}')
    for r in rows:
        print(f'{r["op"]:<32}{r["shape"]:<14}{r["reference_ms"]:>14.3f}{r["ext_ms"]:>10.3f}'
              f'{r["speedup"]:>8.2f}x')
    print(f'fixed cost of one forward+backward from Python (a 1-element multiply), included '
          f'once in every forward+backward row: {launch_cost(args.device, args.repeat):.3f} ms')
    for b in bandwidth:
        print(f'softmax-pool forward {b["shape"]:<13}: {b["op_gbps"]:8.1f} GB/s '
              f'({b["op_bytes"] / 1e6:.1f} MB in {b["op_ms"]:.3f} ms), copy '
              f'{b["copy_gbps"]:8.1f} GB/s: {100 * b["fraction"]:.0f}% of the copy '
              f'(target on a GPU: at least 60%)')
    for p in profile:
        print(f'DualFormer-T 800x1280 fwd+bwd, {p["backend"]:>9}: step {p["step_ms"]:.1f} ms '
              f'(wall {p["wall_ms"]:.1f} ms), partition ops fwd {p["partition_fwd_ms"]:.1f} + '
              f'bwd {p["partition_bwd_ms"]:.1f} ms = {100 * p["share"]:.1f}%')
    if len(profile) == 2:
        print(f'whole backbone reference/ext: {profile[0]["wall_ms"] / profile[1]["wall_ms"]:.2f}x')


if __name__ == '__main__':
    main()
