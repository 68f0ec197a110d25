# Copyright (c) dualformer-mm contributors.
"""How often partition ties change what a deployed model predicts, on real images.

LSH puts a token in a partition by the signs of its projections on random hyperplanes; a
token within float32 rounding of a plane may be put on different sides by two correct
computations of the same network, and then the outputs differ by more than rounding.
:func:`measure` runs a classifier or segmentor (mmseg's whole inference) three ways on each
image, as users run them, every runtime computing its own partitions: PyTorch with the fused
op kernels (``ext``), PyTorch with the reference ops (``reference``) and ONNX Runtime on the
exported file. For every pair it records whether the predicted labels agree (top-1 of the
classifier, every pixel's label of the segmentor), the largest absolute difference of the
outputs and the fraction of tokens whose partition code differs; for every image the
hyperplane margin (the smallest ``|cos|`` of a token to a plane). ``tools/deployment/
partition_agreement.py`` is its command line.
"""
import datetime
import importlib.metadata
import os
import os.path as osp
import platform
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import ops
from .onnx_export import INPUT_NAME, DeploymentError, export_checked, session
from .partitions import CODES_PREFIX, TIE_MARGIN, watch_partitions
from .targets import ExportTarget, load_config

#: The runtimes compared, PyTorch's two op backends and ONNX Runtime.
RUNTIMES = ('ext', 'reference', 'onnxruntime')
#: The parts whose outputs give labels, the argmax over axis 1 (classes) of their first
#: output.
LABELLED_PARTS = ('classifier', 'segmentor')
#: The file suffixes of the images an ``--images`` folder is searched for.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
#: Packages whose versions a report names.
PACKAGES = ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'mmcv', 'mmengine', 'mmpretrain',
            'mmsegmentation', 'numpy')


def find_images(sources: Union[str, Sequence[str]]) -> List[str]:
    """The image files of ``sources``: folders (searched at every depth, sorted) and files.

    Args:
        sources (str | Sequence[str]): Folders and image files, in order.

    Returns:
        list[str]: Paths of the files whose suffix is one of :data:`IMAGE_SUFFIXES`.

    Raises:
        DeploymentError: A source that does not exist, a file that is no image, or no image
            at all.

    Example:
        >>> find_images('data/demo/ade/images/validation')[:1]  # doctest: +SKIP
        ['data/demo/ade/images/validation/validation_00000.jpg']
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    paths: List[str] = []
    for source in sources:
        if osp.isdir(source):
            paths += sorted(osp.join(root, name) for root, _, names in os.walk(source)
                            for name in names if name.lower().endswith(IMAGE_SUFFIXES))
        elif osp.isfile(source) and source.lower().endswith(IMAGE_SUFFIXES):
            paths.append(source)
        else:
            raise DeploymentError(f'--images {source}: neither a folder nor an image file '
                                  f'({", ".join(IMAGE_SUFFIXES)})')
    if not paths:
        raise DeploymentError(f'--images {" ".join(sources)}: no image files '
                              f'({", ".join(IMAGE_SUFFIXES)})')
    return paths


def preprocess(target: ExportTarget, config: str, paths: Sequence[str],
               cfg_options: Optional[Dict] = None,
               resize: Optional[Tuple[int, int]] = None) -> Iterator[Tuple[str, Tensor]]:
    """The model inputs of ``paths`` as the config's test pipeline and data preprocessor
    make them (annotations are not loaded).

    Args:
        target (ExportTarget): A classifier or segmentor target of ``config``.
        config (str): Its config.
        paths (Sequence[str]): Image files.
        cfg_options (dict, optional): The config overrides ``target`` was built with.
        resize (tuple[int, int], optional): (H, W) every image is resized to (bilinear,
            mmcv's ``Resize``) after loading, before the pipeline's other transforms.

    Yields:
        tuple[str, Tensor]: Each path with its normalised (1, 3, H, W) image.
    """
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    cfg = load_config(config, cfg_options)
    pipeline = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    pipeline = [t for t in pipeline if not str(t['type']).startswith('LoadAnnotations')]
    if resize is not None:
        load = next((i for i, t in enumerate(pipeline)
                     if str(t['type']).startswith('LoadImage')), -1)
        pipeline.insert(load + 1, dict(type='Resize', scale=(resize[1], resize[0]),
                                       keep_ratio=False))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        if DefaultScope.get_current_instance() is None:
            DefaultScope.get_instance(f'agreement-{cfg.default_scope}',
                                      scope_name=cfg.default_scope)
        transform = Compose(pipeline)
        for path in paths:
            try:
                packed = transform(dict(img_path=path))
            except AssertionError as err:  # mmcv's LoadImageFromFile on an unreadable file
                raise DeploymentError(f'{path}: {err}') from None
            batch = target.model.data_preprocessor(
                dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]), False)
            yield path, batch['inputs'].float()


@dataclass
class PairAgreement:
    """Two runtimes on one image.

    Attributes:
        labels (float): Fraction of labels that agree: 0 or 1 for a classifier's top-1, the
            fraction of pixels for a segmentor.
        max_abs_diff (float): The largest absolute difference of the outputs.
        codes (float): Fraction of tokens (over every MHPA, head and image) whose partition
            code differs.
        labels_differing (int): Labels (top-1, or pixels) that differ.
        labels_total (int): Labels compared.
    """

    labels: float
    max_abs_diff: float
    codes: float
    labels_differing: int = 0
    labels_total: int = 1


@dataclass
class ImageAgreement:
    """Every pair of runtimes on one image.

    Attributes:
        path (str): The image file.
        shape (list[int]): The model input's (N, C, H, W).
        margin (float, optional): The smallest ``|cos|`` of a token to a hyperplane normal over
            the PyTorch runs (None: no LSH).
        pairs (dict[str, PairAgreement]): By ``'a/b'`` of :data:`RUNTIMES`.
    """

    path: str
    shape: List[int]
    margin: Optional[float]
    pairs: Dict[str, PairAgreement] = field(default_factory=dict)


def _pair_agreement(a: Tuple[List[np.ndarray], Dict[str, np.ndarray]],
                    b: Tuple[List[np.ndarray], Dict[str, np.ndarray]]) -> PairAgreement:
    (out_a, codes_a), (out_b, codes_b) = a, b
    labels_a, labels_b = (out[0].argmax(1) for out in (out_a, out_b))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(out_a, out_b))
    if set(codes_a) != set(codes_b):
        raise AssertionError(f'the runtimes hashed other MHPAs: {sorted(codes_a)} and '
                             f'{sorted(codes_b)}')
    differing = sum(int((codes_a[k] != codes_b[k]).sum()) for k in codes_a)
    total = sum(v.size for v in codes_a.values())
    same = labels_a == labels_b
    return PairAgreement(float(same.mean()), diff, differing / total if total else 0.0,
                         int(same.size - same.sum()), int(same.size))


class Comparison:
    """The runtimes of :data:`RUNTIMES` on images of one target (:func:`measure`).

    ONNX Runtime runs the target exported with its partition codes as extra outputs
    (:func:`~dualformer_mm.deployment.onnx_export.export_checked`; every other node is the
    deployed file's), one static export per input size, kept in ``work_dir``.

    Args:
        target (ExportTarget): A classifier or segmentor.
        work_dir (str): Where the ONNX files go.
        runtimes (Sequence[str]): Those of :data:`RUNTIMES` to compare. Defaults to all.
        exporter (str): The ONNX exporter. Defaults to ``'auto'``.

    Example:
        >>> comparison = Comparison(target, 'work_dirs/agreement')  # doctest: +SKIP
        >>> comparison(image, 'a.png').pairs['reference/onnxruntime'].labels  # doctest: +SKIP
        1.0
    """

    def __init__(self, target: ExportTarget, work_dir: str,
                 runtimes: Sequence[str] = RUNTIMES, exporter: str = 'auto') -> None:
        if target.part not in LABELLED_PARTS:
            raise DeploymentError(f'partition agreement takes a classifier or segmentor, got '
                                  f'the {target.part} part')
        unknown = [r for r in runtimes if r not in RUNTIMES]
        if unknown or len(set(runtimes)) < 2:
            raise DeploymentError(f'runtimes must be at least two of {RUNTIMES}, got '
                                  f'{list(runtimes)}')
        if 'ext' in runtimes and not ops.extension_available('cpu'):
            raise DeploymentError(
                "the 'ext' op backend (dualformer_mm._ext) is not built: build it (make "
                "setup) or compare the others (--runtimes reference onnxruntime)")
        self.target, self.work_dir, self.exporter = target, work_dir, exporter
        self.runtimes = [r for r in RUNTIMES if r in runtimes]
        self.sessions: Dict[Tuple[int, ...], object] = {}
        self.exports: List[str] = []

    def _session(self, images: Tensor):
        shape = tuple(images.shape)
        if shape not in self.sessions:
            os.makedirs(self.work_dir, exist_ok=True)
            path = osp.join(self.work_dir, f"{self.target.part}_{'x'.join(map(str, shape))}"
                            '_with_codes.onnx')
            export_checked(self.target, images, path, exporter=self.exporter)
            self.sessions[shape] = session(path)
            self.exports.append(path)
        return self.sessions[shape]

    def _pytorch(self, backend: str, images: Tensor):
        with torch.no_grad(), ops.use_backend(backend), \
                watch_partitions(self.target.backbone) as records:
            outputs = self.target.reference(images)
        codes = {r.name: r.codes.numpy() for r in records if r.margin is not None}
        margins = [r.margin for r in records if r.margin is not None]
        return [o.float().numpy() for o in outputs], codes, min(margins, default=None)

    def _onnxruntime(self, images: Tensor):
        sess = self._session(images)
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, {INPUT_NAME: images.numpy()})))
        codes = {k[len(CODES_PREFIX):]: v for k, v in got.items() if k.startswith(CODES_PREFIX)}
        return [got[name] for name in self.target.output_names], codes

    def __call__(self, images: Tensor, path: str = '') -> ImageAgreement:
        """Compare the runtimes on ``images`` (1, 3, H, W), normalised."""
        runs, margins = {}, []
        for runtime in self.runtimes:
            if runtime == 'onnxruntime':
                runs[runtime] = self._onnxruntime(images)
            else:
                outputs, codes, margin = self._pytorch(runtime, images)
                runs[runtime] = outputs, codes
                if margin is not None:
                    margins.append(margin)
        result = ImageAgreement(path, list(images.shape), min(margins, default=None))
        for a, b in combinations(self.runtimes, 2):
            result.pairs[f'{a}/{b}'] = _pair_agreement(runs[a], runs[b])
        return result


def summarize(results: Sequence[ImageAgreement], part: str) -> Dict:
    """Figures over every image, per pair of runtimes.

    Args:
        results (Sequence[ImageAgreement]): One per image.
        part (str): ``'classifier'`` or ``'segmentor'``.

    Returns:
        dict: ``images``, ``near_ties`` (images with a margin under :data:`~dualformer_mm.deployment.partitions.TIE_MARGIN`),
        ``smallest_margin`` and, in ``pairs``, for each pair: ``labels_agree`` (images whose
        labels all agree), ``labels_differing`` and ``labels_total`` (labels, top-1 or pixels,
        that differ, of all), ``mean_label_agreement``, ``min_label_agreement``,
        ``max_abs_diff``, ``median_max_abs_diff``, ``images_with_code_disagreement``,
        ``mean_code_disagreement`` and ``max_code_disagreement``.

    Example:
        >>> one = ImageAgreement('a.png', [1, 3, 64, 64], 1e-3,
        ...                      {'ext/reference': PairAgreement(1.0, 2e-7, 0.0)})
        >>> two = ImageAgreement('b.png', [1, 3, 64, 64], 1e-7,
        ...                      {'ext/reference': PairAgreement(0.0, 3.1, 0.25)})
        >>> s = summarize([one, two], 'classifier')
        >>> s['near_ties'], s['pairs']['ext/reference']['labels_agree']
        (1, 1)
        >>> s['pairs']['ext/reference']['max_code_disagreement']
        0.25
    """
    margins = [r.margin for r in results if r.margin is not None]
    summary = dict(part=part, images=len(results),
                   near_ties=sum(m < TIE_MARGIN for m in margins),
                   smallest_margin=min(margins, default=None), pairs={})
    for pair in (results[0].pairs if results else {}):
        rows = [r.pairs[pair] for r in results]
        labels = [p.labels for p in rows]
        diffs = [p.max_abs_diff for p in rows]
        codes = [p.codes for p in rows]
        summary['pairs'][pair] = dict(
            labels_agree=sum(v == 1.0 for v in labels),
            labels_differing=sum(p.labels_differing for p in rows),
            labels_total=sum(p.labels_total for p in rows),
            mean_label_agreement=float(np.mean(labels)), min_label_agreement=min(labels),
            max_abs_diff=max(diffs),
            median_max_abs_diff=float(np.median(diffs)),
            images_with_code_disagreement=sum(c > 0 for c in codes),
            mean_code_disagreement=float(np.mean(codes)), max_code_disagreement=max(codes))
    return summary


def table(summary: Dict) -> str:
    """The summary as a Markdown table, one row per pair of runtimes.

    Example:
        >>> print(table(dict(part='classifier', images=2, near_ties=0, smallest_margin=1e-4,
        ...     pairs={'ext/onnxruntime': dict(labels_agree=2, labels_differing=0,
        ...         labels_total=2, max_abs_diff=3e-7, median_max_abs_diff=1e-7,
        ...         images_with_code_disagreement=0, mean_code_disagreement=0.0,
        ...         max_code_disagreement=0.0)})))  # doctest: +NORMALIZE_WHITESPACE
        | runtimes | top-1 agrees | max abs diff (median) | images with code disagreement |
          tokens with another code (mean / max) |
        |---|---|---|---|---|
        | ext / onnxruntime | 2 of 2 | 3e-07 (1e-07) | 0 of 2 | 0 / 0 |
        <BLANKLINE>
        2 images, hyperplane margin >= 0.0001, 0 with a near tie (margin < 5e-06)
    """
    n = summary['images']
    label = 'top-1 agrees' if summary['part'] == 'classifier' else \
        'every pixel label equal; pixels with another label'
    rows = [f'| runtimes | {label} | max abs diff (median) | images with code disagreement | '
            'tokens with another code (mean / max) |', '|---|---|---|---|---|']
    for pair, s in summary['pairs'].items():
        agree = f"{s['labels_agree']} of {n}"
        if summary['part'] != 'classifier':
            agree += f"; {s['labels_differing']} of {s['labels_total']}"
        rows.append(f"| {pair.replace('/', ' / ')} | {agree} | {s['max_abs_diff']:.2g} "
                    f"({s['median_max_abs_diff']:.2g}) | {s['images_with_code_disagreement']} "
                    f"of {n} | {s['mean_code_disagreement']:.3g} / "
                    f"{s['max_code_disagreement']:.3g} |")
    margin = summary['smallest_margin']
    rows += ['', f"{n} images, hyperplane margin >= {margin:.2g}, {summary['near_ties']} with a "
             f'near tie (margin < {TIE_MARGIN:g})' if margin is not None else f'{n} images']
    return '\n'.join(rows)


def environment() -> Dict:
    """The machine, package versions, threads and date, for a report.

    Example:
        >>> sorted(environment())
        ['cpu', 'cpu_count', 'date', 'packages', 'python', 'threads']
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(cpu=cpu, cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
                python=platform.python_version(), packages=versions,
                date=datetime.date.today().isoformat())


def measure(target: ExportTarget, config: str, paths: Sequence[str], work_dir: str,
            runtimes: Sequence[str] = RUNTIMES, exporter: str = 'auto',
            cfg_options: Optional[Dict] = None, resize: Optional[Tuple[int, int]] = None,
            progress=None) -> Dict:
    """Compare the runtimes on every image of ``paths``; the report as a dict.

    Args:
        target (ExportTarget): A classifier or segmentor of ``config`` (with its weights).
        config (str): The config (its test pipeline makes the inputs).
        paths (Sequence[str]): Image files.
        work_dir (str): Where the ONNX files go.
        runtimes (Sequence[str]): At least two of :data:`RUNTIMES`. Defaults to all.
        exporter (str): The ONNX exporter. Defaults to ``'auto'``.
        cfg_options (dict, optional): Config overrides ``target`` was built with.
        resize (tuple[int, int], optional): (H, W) to resize every image to
            (:func:`preprocess`).
        progress (Callable[[int, ImageAgreement], None], optional): Called after each image.

    Returns:
        dict: ``summary`` (:func:`summarize`), ``images`` (one :class:`ImageAgreement` each,
        as dicts), ``onnx_files`` and ``environment`` (:func:`environment`).

    Example:
        >>> target = build_target(config, 'epoch_4.pth')  # doctest: +SKIP
        >>> report = measure(target, config, find_images('images'), 'work')  # doctest: +SKIP
        >>> print(table(report['summary']))  # doctest: +SKIP
    """
    comparison = Comparison(target, work_dir, runtimes, exporter)
    results = []
    for i, (path, images) in enumerate(preprocess(target, config, paths, cfg_options, resize)):
        results.append(comparison(images, path))
        if progress is not None:
            progress(i, results[-1])
    return dict(summary=summarize(results, target.part),
                images=[asdict(r) for r in results], onnx_files=comparison.exports,
                environment=environment())
