# Copyright (c) dualformer-mm contributors.
"""Latency of whole models deployed with mmdeploy: ONNX Runtime against PyTorch eager.

What ``tools/deployment/benchmark_deploy.py`` runs. For each task and model
(:data:`TASKS`), :func:`prepare` builds the toolbox model from its config (random weights;
a Mask R-CNN's two classification layers drawn so that it gives 100 detections and its mask
head works on them, as a trained one does: :func:`seed_detector`), exports it with
mmdeploy's ``torch2onnx`` and this package's deploy configs (``configs/deploy``), preprocesses
one of scikit-image's photos as mmdeploy does, and checks ONNX Runtime's outputs against the
eager model's on it (:func:`check_detections`, :func:`check_labels`). :func:`time_deployed`
then times, on that preprocessed tensor, the toolbox model's ``predict`` (mmdet's / mmseg's
post-processing included, as mmdeploy's PyTorch reference runs it), the ONNX Runtime session
alone, and the session followed by mmdeploy's own post-processing of its deployed model
(``End2EndModel``: a detector's 100 masks pasted into the image, boxes rescaled; a segmentor's
label map resized to the image), with each thread count, in interleaved rounds
(:func:`.measure.time_interleaved`); :func:`format_table` prints the medians with the ratios to
Swin-T's in the same runtime.

mmdeploy and the toolboxes are imported by :func:`prepare` only.

Example:
    >>> rows = [dict(task='segmentor', size=[512, 512], model='dualformer-s', threads=1,
    ...              pytorch_ms=300.0, onnxruntime_ms=200.0, mmdeploy_ms=240.0),
    ...         dict(task='segmentor', size=[512, 512], model='swin-t', threads=1,
    ...              pytorch_ms=250.0, onnxruntime_ms=250.0, mmdeploy_ms=300.0)]
    >>> format_table(rows).splitlines()[2].split(' | ')[3:]
    ['1', '300.0', '200.0', '240.0', '1.50x', '1.25x', '1.20', '0.80', '0.80 |']
"""
import copy
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .measure import median, time_interleaved
from .options import Settings

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: The peer every time is divided by, in the same runtime and with the same threads.
REFERENCE = 'swin-t'
#: The scikit-image photo every model runs on.
PHOTO = 'coffee'


@dataclass(frozen=True)
class Task:
    """One benchmarked task: its deploy config, input size and models.

    Args:
        deploy (str): mmdeploy deploy config (a file of ``configs/deploy``).
        size (Tuple[int, int]): (height, width) the photo is resized to before mmdeploy's
            preprocessing (which pads a detector's input to a multiple of 32).
        models (Dict[str, str]): Model name -> model config; ``'mmdet::x'`` and
            ``'mmseg::x'`` name a config shipped inside that toolbox's package.

    Example:
        >>> TASKS['detector'].size
        (800, 1333)
    """

    deploy: str
    size: Tuple[int, int]
    models: Dict[str, str]


#: The tasks of the benchmark.
TASKS: Dict[str, Task] = {
    'detector': Task(
        osp.join(ROOT, 'configs/deploy/instance-seg_onnxruntime_dynamic.py'), (800, 1333), {
            'dualformer-t': osp.join(ROOT, 'configs/mmdet/mask_rcnn_dualformer_t_1x.py'),
            'dualformer-s': osp.join(ROOT, 'configs/mmdet/mask_rcnn_dualformer_s_1x.py'),
            REFERENCE: 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'}),
    'segmentor': Task(
        osp.join(ROOT, 'configs/deploy/segmentation_onnxruntime_static-512x512.py'), (512, 512), {
            'dualformer-s': osp.join(ROOT, 'configs/mmseg/upernet_dualformer_s_ade20k.py'),
            REFERENCE: 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                       'ade20k-512x512.py'}),
}

# A detector's check: most of the eager model's detections found again in ONNX Runtime (same
# class, box IoU >= 0.5). mmdeploy's RPN suppresses the proposals of all levels in one NMS where
# mmdet's runs one per level, so a few detections differ even for mmdet's own ResNet-50
# (docs/deployment.md, "Parity"). A segmentor's: the label maps alike almost everywhere.
MIN_MATCHED = 0.9
MIN_LABEL_AGREEMENT = 0.99


@dataclass
class Deployed:
    """One model ready to time: its eager ``predict`` and its ONNX file, on the same input.

    Args:
        task (str): Task name (a key of :data:`TASKS`, or any name for a stand-in).
        model (str): Model name.
        size (Tuple[int, int]): (height, width) of the input tensor.
        path (str): The ONNX file.
        eager (Callable[[], Any]): One eager inference on the input.
        feed (Dict[str, np.ndarray]): The ONNX Runtime inputs (the same tensor).
        check (Dict[str, Any]): What :func:`check_detections` or :func:`check_labels` found;
            ``passed`` False leaves ONNX Runtime untimed.
        postprocess (Callable, optional): mmdeploy's post-processing of the session's outputs
            (a list of arrays), as its deployed model runs it after the session; timed with
            the session as the ``mmdeploy`` runtime.

    Example:
        >>> net = torch.nn.Conv2d(3, 4, 3).eval()
        >>> x = torch.rand(1, 3, 8, 8)
        >>> d = Deployed('toy', 'conv', (8, 8), 'conv.onnx', lambda: net(x),
        ...              {'input': x.numpy()}, dict(passed=True))
        >>> d.passed
        True
    """

    task: str
    model: str
    size: Tuple[int, int]
    path: str
    eager: Callable[[], Any]
    feed: Dict[str, np.ndarray]
    check: Dict[str, Any] = field(default_factory=dict)
    postprocess: Optional[Callable[[List[np.ndarray]], Any]] = None

    @property
    def passed(self) -> bool:
        """Whether ONNX Runtime's outputs agreed with the eager model's."""
        return bool(self.check.get('passed'))

    def session(self, threads: int):
        """An ONNX Runtime CPU session with ``threads`` intra-op threads."""
        from ..deployment import session
        return session(self.path, threads=threads)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), x1y1x2y2.

    Example:
        >>> box_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.], [0, 0, 2, 2.]]))
        array([[0.33333333, 1.        ]])
    """
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def check_detections(ref_boxes: np.ndarray, ref_scores: np.ndarray, ref_labels: np.ndarray,
                     boxes: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """How many of the eager detections ONNX Runtime found again.

    In order of the eager scores, each eager detection takes the unmatched ONNX Runtime
    detection of its class with the highest box IoU, if at least 0.5.

    Args:
        ref_boxes (np.ndarray): Eager boxes (N, 4); ``ref_scores`` (N,), ``ref_labels`` (N,).
        boxes (np.ndarray): ONNX Runtime's boxes (M, 4); ``labels`` (M,).

    Returns:
        dict: ``eager`` and ``onnxruntime`` (counts), ``matched``, and ``passed``: both
        found something and at least :data:`MIN_MATCHED` of the larger count matched.

    Example:
        >>> box = np.array([[0, 0, 10, 10.]])
        >>> check_detections(box, np.array([0.9]), np.array([3]), box, np.array([3]))
        {'eager': 1, 'onnxruntime': 1, 'matched': 1, 'passed': True}
    """
    iou = box_iou(ref_boxes, boxes) if len(ref_boxes) and len(boxes) else \
        np.zeros((len(ref_boxes), len(boxes)))
    iou[ref_labels[:, None] != labels[None, :]] = 0
    taken = set()
    for i in np.argsort(-ref_scores, kind='stable'):
        free = [j for j in np.argsort(-iou[i], kind='stable') if j not in taken]
        if free and iou[i, free[0]] >= 0.5:
            taken.add(free[0])
    most = max(len(ref_boxes), len(boxes))
    return dict(eager=len(ref_boxes), onnxruntime=len(boxes), matched=len(taken),
                passed=bool(min(len(ref_boxes), len(boxes)) > 0
                            and len(taken) >= MIN_MATCHED * most))


def check_labels(ref: np.ndarray, got: np.ndarray) -> Dict[str, Any]:
    """The share of pixels whose label ONNX Runtime and the eager model agree on.

    Example:
        >>> check_labels(np.array([[1, 2], [3, 4]]), np.array([[[1, 2], [3, 4]]]))
        {'label_agreement': 1.0, 'passed': True}
    """
    ref, got = np.asarray(ref).squeeze(), np.asarray(got).squeeze()
    if ref.shape != got.shape:
        return dict(label_agreement=0.0, passed=False,
                    shapes=[list(ref.shape), list(got.shape)])
    agreement = float((ref == got).mean())
    return dict(label_agreement=agreement, passed=agreement >= MIN_LABEL_AGREEMENT)


def describe_check(check: Dict[str, Any]) -> str:
    """The check's figures on one line.

    Example:
        >>> describe_check(dict(eager=100, onnxruntime=100, matched=98, passed=True))
        'eager 100, onnxruntime 100, matched 98: passed'
    """
    figures = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                        for k, v in check.items() if k != 'passed')
    return f"{figures}: {'passed' if check.get('passed') else 'FAILED'}"


# --- building, exporting and checking the toolbox models -------------------------------------


def resolve_config(config: str) -> str:
    """The file of ``config``: a path, or ``'mmdet::x'`` / ``'mmseg::x'`` for a config shipped
    inside that toolbox's package (``<package>/.mim/configs/x``)."""
    if '::' not in config:
        return config
    package, relative = config.split('::', 1)
    import importlib
    module = importlib.import_module(package)
    return osp.join(osp.dirname(module.__file__), '.mim', 'configs', relative)


def photo(size: Tuple[int, int]) -> np.ndarray:
    """scikit-image's :data:`PHOTO` resized to ``size`` (h, w), BGR as mmcv reads files."""
    import cv2
    from skimage import data
    rgb = getattr(data, PHOTO)()
    return cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), (size[1], size[0]),
                      interpolation=cv2.INTER_AREA)


#: The spread (standard deviation) of the logits :func:`seed_detector` gives a Mask R-CNN's
#: two classification layers on the benchmark's photo.
LOGIT_STD = 2.0


def seed_detector(model: torch.nn.Module, run: Callable[[], Any]) -> torch.nn.Module:
    """Classification layers of a Mask R-CNN that score classes apart, at one logit spread.

    Random layers score all 80 classes alike (about 1/81, under the 0.05 threshold): no
    detection, and the mask head would never run. The RPN's and the box head's classification
    weights are drawn (seeded) so that their logits spread by :data:`LOGIT_STD` on the
    features ``run`` gives them (one inference, measured with forward hooks): 100 detections
    with scores well below 1, as a trained model gives on a busy photo, whatever the scale of a
    backbone's random features (a fixed weight scale saturates Swin-T's scores at 1.0, whose
    ties make the runtimes' top 100 differ).

    Args:
        model (nn.Module): An mmdet Mask R-CNN.
        run (Callable[[], Any]): One inference of ``model``.

    Returns:
        nn.Module: ``model``, changed in place.
    """
    layers = {'rpn': model.rpn_head.rpn_cls, 'cls': model.roi_head.bbox_head.fc_cls}
    rms: Dict[str, float] = {}

    def hook(name: str):

        def record(module, inputs, output) -> None:
            rms.setdefault(name, float(inputs[0].detach().pow(2).mean().sqrt()))

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    gen = torch.Generator().manual_seed(0)
    for name, layer in layers.items():
        fan_in = layer.weight[0].numel()
        layer.weight.data.normal_(0, LOGIT_STD / (rms[name] * fan_in**0.5), generator=gen)
    return model


def prepare(task_name: str, model_name: str, work_dir: str, reuse: bool = False) -> Deployed:
    """Build, export (mmdeploy ``torch2onnx``) and check one model of :data:`TASKS`.

    Args:
        task_name (str): ``'detector'`` or ``'segmentor'``.
        model_name (str): A model of that task.
        work_dir (str): Its checkpoint and ``end2end.onnx`` go to
            ``work_dir/<task>/<model>``.
        reuse (bool): Take the checkpoint and ONNX file already there instead of exporting
            (the check still runs). Defaults to False.

    Returns:
        Deployed: The eager model's ``predict`` and the ONNX file on the preprocessed photo.
    """
    from mmdeploy.apis import build_task_processor, torch2onnx
    from mmdeploy.utils import get_input_shape, load_config

    from ..deployment import mmdeploy_support  # noqa: F401  (registers the mends)

    task = TASKS[task_name]
    out = osp.join(work_dir, task_name, model_name)
    os.makedirs(out, exist_ok=True)
    checkpoint, path = osp.join(out, 'model.pth'), osp.join(out, 'end2end.onnx')
    deploy_cfg, model_cfg = load_config(task.deploy, resolve_config(task.models[model_name]))
    model_cfg.model.backbone.init_cfg = None  # random weights: no download of a pretrained
    processor = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    reusing = reuse and osp.exists(checkpoint) and osp.exists(path)
    torch.manual_seed(0)
    model = processor.build_pytorch_model(checkpoint if reusing else None).eval()
    img = photo(task.size)
    data, inputs = processor.create_input(img, get_input_shape(deploy_cfg),
                                          data_preprocessor=model.data_preprocessor)
    samples = data['data_samples']

    def eager():
        with torch.no_grad():
            return model(inputs, copy.deepcopy(samples), mode='predict')

    if not reusing:
        if task_name == 'detector':
            seed_detector(model, eager)
        torch.save({'state_dict': model.state_dict()}, checkpoint)
        torch2onnx(img, out, 'end2end.onnx', deploy_cfg, model_cfg, checkpoint, 'cpu')
    backend = processor.build_backend_model([path])  # its post-processing, not its session

    if task_name == 'detector':

        def postprocess(outputs: List[np.ndarray]):
            dets, labels, masks = (torch.from_numpy(o) for o in outputs)
            return backend.postprocessing_results(dets, labels, masks, copy.deepcopy(samples))
    else:

        def postprocess(outputs: List[np.ndarray]):
            return backend.pack_result(torch.from_numpy(outputs[0]), copy.deepcopy(samples))

    feed = {'input': inputs.numpy()}
    size = (int(inputs.shape[2]), int(inputs.shape[3]))
    deployed = Deployed(task_name, model_name, size, path, eager, feed, postprocess=postprocess)
    got = deployed.session(threads=torch.get_num_threads()).run(None, feed)
    ref = eager()[0]
    if task_name == 'detector':
        pred = ref.pred_instances
        deployed.check = check_detections(pred.bboxes.numpy(), pred.scores.numpy(),
                                          pred.labels.numpy(), got[0][0, :, :4], got[1][0])
    else:
        deployed.check = check_labels(ref.pred_sem_seg.data.numpy(), got[0])
    return deployed


# --- timing and the table ---------------------------------------------------------------------


#: What :func:`time_deployed` times: the eager model, the session, the session and mmdeploy's
#: post-processing.
RUNTIMES = ('pytorch', 'onnxruntime', 'mmdeploy')


def time_deployed(models: Sequence[Deployed], threads: Sequence[int], warmup: int,
                  repeat: int) -> List[Dict[str, Any]]:
    """Time every model's eager ``predict`` and ONNX Runtime run, for each thread count.

    For each thread count: ``torch.set_num_threads`` and sessions with as many intra-op
    threads, then :func:`.measure.time_interleaved` over all models and runtimes (``warmup``
    untimed calls each, then ``repeat`` rounds running each once in turn): ``pytorch`` (the
    eager call), ``onnxruntime`` (the session) and, where a model has ``postprocess``,
    ``mmdeploy`` (the session, then ``postprocess``). A model whose check did not pass is timed
    in PyTorch only. The thread count is restored after.

    Args:
        models (Sequence[Deployed]): The models, typically those of one task.
        threads (Sequence[int]): Thread counts, each >= 1.
        warmup (int): Untimed calls per model and runtime.
        repeat (int): Timed rounds.

    Returns:
        List[dict]: One row per model and thread count: ``task``, ``size``, ``model``,
        ``threads``, ``pytorch_ms``, ``onnxruntime_ms`` and ``mmdeploy_ms`` (medians; None
        where not timed), ``*_samples_ms``, ``*_error`` where a call raised, and ``check``.
    """
    rows: List[Dict[str, Any]] = []
    saved = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            fns: Dict[str, Callable[[], Any]] = {}
            for m in models:
                fns[f'{m.model} pytorch'] = m.eager
                if m.passed:
                    sess = m.session(n)
                    fns[f'{m.model} onnxruntime'] = \
                        lambda sess=sess, feed=m.feed: sess.run(None, feed)
                    if m.postprocess is not None:
                        fns[f'{m.model} mmdeploy'] = lambda sess=sess, m=m: m.postprocess(
                            sess.run(None, m.feed))
            settings = Settings(device='cpu', threads=n, amp=False, amp_dtype=None,
                                channels_last=False, compile=False, warmup=warmup,
                                repeat=repeat, iters=1)
            times, errors = time_interleaved(fns, settings)
            for m in models:
                row: Dict[str, Any] = dict(task=m.task, size=list(m.size), model=m.model,
                                           threads=n, check=m.check)
                for runtime in RUNTIMES:
                    key = f'{m.model} {runtime}'
                    row[f'{runtime}_ms'] = 1e3 * median(times[key]) if key in times else None
                    row[f'{runtime}_samples_ms'] = [1e3 * t for t in times.get(key, [])]
                    if key in errors:
                        row[f'{runtime}_error'] = errors[key]
                rows.append(row)
    finally:
        torch.set_num_threads(saved)
    return rows


def _ratio(a: Optional[float], b: Optional[float], unit: str = '') -> str:
    return f'{a / b:.2f}{unit}' if a and b else 'n/a'


def _ms(value: Optional[float]) -> str:
    return f'{value:.1f}' if value else 'n/a'


def format_table(rows: Sequence[Dict[str, Any]], reference: str = REFERENCE) -> str:
    """The rows of :func:`time_deployed` as a Markdown table.

    Columns: ms per image in PyTorch eager, in ONNX Runtime (the session) and in mmdeploy's
    deployed model (the session and its post-processing), the speed-ups of the session and of
    the deployed model over eager, and each time over ``reference``'s of the same task, thread
    count and runtime (``n/a`` where a time is missing).

    Args:
        rows (Sequence[dict]): Rows with ``task``, ``size``, ``model``, ``threads``,
            ``pytorch_ms``, ``onnxruntime_ms``, ``mmdeploy_ms``.
        reference (str): The model the ratios divide by. Defaults to :data:`REFERENCE`.

    Returns:
        str: Header, separator and one line per row, in the order given.
    """
    lines = ['| task | input | model | threads | PyTorch eager (ms) | ONNX Runtime (ms) | '
             'mmdeploy model (ms) | ORT speed-up | mmdeploy speed-up | PyTorch / Swin-T | '
             'ORT / Swin-T | mmdeploy / Swin-T |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        ref = next((r for r in rows if r['task'] == row['task'] and r['model'] == reference
                    and r['threads'] == row['threads']), {})
        times = [row.get(f'{runtime}_ms') for runtime in RUNTIMES]
        lines.append(
            f"| {row['task']} | {row['size'][0]}x{row['size'][1]} | {row['model']} | "
            f"{row['threads']} | " + ' | '.join(_ms(t) for t in times)
            + f' | {_ratio(times[0], times[1], "x")} | {_ratio(times[0], times[2], "x")} | '
            + ' | '.join(_ratio(t, ref.get(f'{runtime}_ms'))
                         for t, runtime in zip(times, RUNTIMES)) + ' |')
    return '\n'.join(lines)
