# Copyright (c) dualformer-mm contributors.
"""Tier 1 of the GPU check: a DualFormer-S training step with the kernels and the reference.

The same weights and input run forward and backward once with ``DUALFORMER_OPS=ext`` and
once with ``reference``, BN and GN, fp32 and fp16/bf16 autocast; the losses must be finite and
the gradients equal within :data:`GRAD_RTOL`. With ``build_ext`` and ``cuda_tests`` this step
decides the report's last line: whether to set ``DUALFORMER_OPS=ext`` on this GPU.
"""
import math
from typing import Any, Dict, List

from .common import Context, result

# Gradient tolerance of the kernels against the reference, per precision: the bound on
# grad_difference()'s max_rel.
GRAD_RTOL = {'fp32': 1e-3, 'fp16': 2e-2, 'bf16': 5e-2}


def grad_difference(ref: Dict[str, Any], ext: Dict[str, Any]) -> Dict[str, Any]:
    """How far the kernels' gradients are from the reference's.

    ``max_rel`` is the largest, over parameters, of ``|g_ext - g_ref| / max(|g_ref|,
    1e-3 |G_ref|)`` (L2 norms; ``G_ref`` all reference gradients together): a parameter whose
    gradient is tiny next to the others (a bias a normalisation makes almost irrelevant) is
    judged against a thousandth of the whole, not against its own rounding noise.
    ``total_rel`` is ``|G_ext - G_ref| / |G_ref|``.
    """
    import torch
    total = math.sqrt(sum(g.double().pow(2).sum().item() for g in ref.values()))
    floor = max(1e-3 * total, 1e-30)
    worst, worst_name, diff_sq = 0.0, '', 0.0
    for name, g_ref in ref.items():
        diff = (ext[name].double() - g_ref.double()).norm().item()
        diff_sq += diff ** 2
        rel = diff / max(g_ref.double().norm().item(), floor)
        if not rel <= worst:  # NaN counts as the worst
            worst, worst_name = rel, name
    finite = all(torch.isfinite(g).all().item() for g in list(ref.values()) + list(ext.values()))
    return dict(max_rel=worst, max_rel_param=worst_name,
                total_rel=math.sqrt(diff_sq) / max(total, 1e-30), finite=finite)


def train_step_case(model: Any, x: Any, precision: str, device: str) -> Dict[str, Any]:
    """One forward+backward of ``model`` with each op backend; the gradients compared.

    The loss is a fixed random linear function of the four stage outputs (the outputs are
    normalised, so a loss like their mean square would be flat and its gradients noise).

    Args:
        model (nn.Module): DualFormer in training mode.
        x (Tensor): Input batch.
        precision (str): ``'fp32'``, ``'fp16'`` or ``'bf16'`` (autocast).
        device (str): ``'cuda'`` or ``'cpu'``.

    Returns:
        Dict[str, Any]: Both losses, ``ext_op_calls`` (dualformer kernels the fused run
        called, from the profiler: 0 would mean the comparison compared the reference with
        itself), ``missing_grads`` and the fields of :func:`grad_difference`.
    """
    import torch
    from dualformer_mm import ops
    dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(precision)
    # A fixed loss scale keeps fp16 gradients out of the subnormal range, as GradScaler does.
    scale = 1024.0 if precision == 'fp16' else 1.0
    weights: List[Any] = []
    losses, grads, calls = {}, {}, {}
    for backend in ('reference', 'ext'):
        model.zero_grad(set_to_none=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with ops.use_backend(backend), torch.autocast(
                    device, dtype=dtype or torch.float32, enabled=dtype is not None):
                outs = model(x)
            if not weights:
                gen = torch.Generator().manual_seed(2)
                weights = [torch.randn(o.shape, generator=gen).to(device) for o in outs]
            loss = sum((o.float() * w).mean() for o, w in zip(outs, weights))
            (loss * scale).backward()
        calls[backend] = sum(1 for e in prof.events() if e.name.startswith('dualformer::'))
        losses[backend] = loss.item()
        grads[backend] = {n: p.grad.detach().float() / scale for n, p in model.named_parameters()
                          if p.grad is not None}
    missing = sorted(set(n for n, p in model.named_parameters() if p.requires_grad)
                     - set(grads['ext']))
    return dict(loss_reference=losses['reference'], loss_ext=losses['ext'],
                ext_op_calls=calls['ext'], reference_op_calls=calls['reference'],
                missing_grads=missing[:5], **grad_difference(grads['reference'], grads['ext']))


DRY_ARCH = dict(depths=[1, 1, 1, 1], channels=[32, 64, 128, 160], num_heads=[1, 2, 4, 5],
                mlp_ratios=[2, 2, 2, 2])


def step_train_step(ctx: Context) -> Dict[str, Any]:
    """DualFormer-S training step, kernels against reference, BN/GN x fp32/fp16/bf16."""
    from dualformer_mm import ops
    from dualformer_mm.ops import _backend
    if not ops.extension_available(ctx.device):
        return result('fail', details=f'dualformer_mm._ext cannot run on {ctx.device}: '
                      f'{_backend._missing(ctx.device)}')
    import torch
    from dualformer_mm import DualFormer
    size, batch = (64, 2) if ctx.dry_run else (224, 8)
    # The dry run checks the step's logic on a one-block-per-stage DualFormer: S's 18 blocks
    # at fp16 on a CPU (emulated half) take minutes.
    arch: Any = DRY_ARCH if ctx.dry_run else 's'
    # What `auto` runs on CUDA (the report's last line depends on it).
    figures: Dict[str, Any] = dict(size=size, batch=batch, arch=arch, tolerance=GRAD_RTOL,
                                   cuda_kernels_verified=_backend.CUDA_KERNELS_VERIFIED)
    problems = []
    for norm in ('BN', 'GN'):
        norm_cfg = dict(type='BN') if norm == 'BN' else dict(type='GN', num_groups=8)
        torch.manual_seed(0)
        model = DualFormer(arch=arch, drop_path_rate=0.0, norm_cfg=norm_cfg).to(ctx.device)
        model.train()
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        x = x.to(ctx.device)
        for precision in ('fp32', 'fp16', 'bf16'):
            key = f'{norm}_{precision}'
            try:
                case = train_step_case(model, x, precision, ctx.device)
            except Exception as err:  # noqa: BLE001 (one case failing must not hide the rest)
                figures[key] = dict(error=f'{type(err).__name__}: {err}'[:500])
                problems.append(f'{key}: {type(err).__name__}: {err}'[:500])
                continue
            figures[key] = {k: (float(f'{v:.4g}') if isinstance(v, float) else v)
                            for k, v in case.items()}
            losses_ok = all(math.isfinite(case[k]) for k in ('loss_reference', 'loss_ext'))
            if not (losses_ok and case['finite']):
                problems.append(f'{key}: non-finite loss or gradient')
            elif case['missing_grads']:
                problems.append(f'{key}: no gradient for {case["missing_grads"]}')
            elif not case['ext_op_calls'] or case['reference_op_calls']:
                problems.append(f'{key}: the fused run called {case["ext_op_calls"]} '
                                f'dualformer kernels, the reference run '
                                f'{case["reference_op_calls"]}')
            elif not case['max_rel'] <= GRAD_RTOL[precision]:
                problems.append(f'{key}: gradient of {case["max_rel_param"]} differs by '
                                f'{case["max_rel"]:.2e} (tolerance {GRAD_RTOL[precision]:.0e})')
    return result('fail' if problems else 'pass', figures, '\n'.join(problems))
