# Copyright (c) dualformer-mm contributors.
"""The partitions MHPA draws on an image (paper section 3.2, Figure 6).

Records the partition codes every :class:`PartitionAttention` module computes during one
forward pass and paints them over the image, one labelled panel per drawn module and head
(stage and its stride, block, head, MHPA's token grid, partitions used of those it has):
:func:`partition_figure` builds the matplotlib figure, :func:`draw_partition_grid` writes a
grid of every stage, and optionally every head and every block, and :func:`draw_partitions`
the one-row strip of ``make demo`` (first block of each stage, first head). The helpers
:func:`build_backbone`, :func:`config_normalization`, :func:`preprocess_image` and
:func:`synthetic_image` prepare a backbone and an input from a config of this repository; the
analysis tools (``tools/visualization/partitions.py``, ``tools/analysis/fourier.py``) share
them.
"""
import contextlib
import logging
import math
import os
import os.path as osp
import re
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image

from dualformer_mm.models import DualFormer, PartitionAttention
from dualformer_mm.utils.complexity import build_model_from_cfg

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn
    from matplotlib.figure import Figure

# ImageNet mean and std (RGB, 0-255), used when a config names no data preprocessor.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_MODULE_NAME = re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.attn$')

# Distinct colours for up to 16 partitions.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195)], dtype=np.uint8)


@torch.no_grad()
def record_partitions(backbone: torch.nn.Module, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Run ``backbone`` on ``image`` (1, 3, H, W) and return each MHPA module's codes.

    Returns:
        dict: module name -> int64 tensor (heads, h, w) of partition codes on MHPA's grid.
    """
    records: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, Tuple[int, int]] = {}
    originals = {}
    modules = {n: m for n, m in backbone.named_modules() if isinstance(m, PartitionAttention)}

    def wrap(name: str, module: PartitionAttention):
        """Record the codes of one module, on its downsampled (h, w) grid."""
        def partition_codes(tokens: torch.Tensor) -> torch.Tensor:
            codes = originals[name](tokens)
            records[name] = codes[0].view(codes.shape[1], *shapes[name]).cpu()
            return codes
        return partition_codes

    def pre_hook(name: str):
        """Remember the token grid the module's downsampling will produce."""
        def hook(module: PartitionAttention, args: Tuple[torch.Tensor]) -> None:
            height, width = args[0].shape[-2:]
            k = module.sr_ratio
            shapes[name] = (math.ceil(height / k), math.ceil(width / k))
        return hook

    handles = []
    try:
        for name, module in modules.items():
            originals[name] = module.partition_codes
            module.partition_codes = wrap(name, module)
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
        was_training = backbone.training
        backbone.eval()
        backbone(image)
        backbone.train(was_training)
    finally:
        for name, module in modules.items():
            del module.partition_codes  # back to the class's method
        for handle in handles:
            handle.remove()
    return records


def draw_partitions(image: np.ndarray, records: Dict[str, torch.Tensor], out_file: str,
                    alpha: float = 0.55, title: Optional[str] = None,
                    capacity: Optional[Dict[str, int]] = None) -> List[str]:
    """Write one labelled row: the image, then the first block of each stage (head 1).

    Each panel names its stage and stride, block and head, MHPA's token grid and how many
    partitions its tokens fill (:func:`partition_figure`).

    Args:
        image (np.ndarray): RGB uint8 image (H, W, 3) the codes were computed on.
        records (dict): Output of :func:`record_partitions`.
        out_file (str): PNG to write (its folder is created).
        alpha (float): Opacity of the partition colours. Defaults to 0.55.
        title (str, optional): Figure title, e.g. the command, machine and versions.
        capacity (dict, optional): Partitions each module has (:func:`partition_capacity`),
            to label panels "used of capacity". Defaults to None (the count used only).

    Returns:
        list[str]: The module names drawn, in panel order.

    Example:
        >>> import tempfile
        >>> net = DualFormer('t').eval()
        >>> image = np.zeros((64, 64, 3), np.uint8)
        >>> records = record_partitions(net, torch.zeros(1, 3, 64, 64))
        >>> draw_partitions(image, records, tempfile.mktemp(suffix='.png'))[:2]
        ['stages.0.blocks.0.attn', 'stages.1.blocks.0.attn']
    """
    stages = {p['stage'] for p in select_partition_panels(records)}
    panels = draw_partition_grid(image, records, out_file, alpha=alpha, title=title,
                                 columns=len(stages) + 1, capacity=capacity)
    return [p['module'] for p in panels]


def overlay_codes(image: np.ndarray, codes: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the palette colour of each partition code, upsampled (nearest), into ``image``."""
    height, width = image.shape[:2]
    colours = PALETTE[codes % len(PALETTE)]
    colours = np.asarray(Image.fromarray(colours).resize((width, height), Image.NEAREST))
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def select_partition_panels(records: Dict[str, torch.Tensor], all_heads: bool = False,
                            all_blocks: bool = False) -> List[Dict]:
    """The (module, head) pairs to draw, in stage, block and head order.

    Args:
        records (dict): Output of :func:`record_partitions`.
        all_heads (bool): Every head of each drawn block, not just head 0. Defaults to False.
        all_blocks (bool): Every block of each stage, not just block 0. Defaults to False.

    Returns:
        list[dict]: One dict per panel with ``module``, ``stage``, ``block`` and ``head``
        (0-based), ``num_heads`` (of the module) and ``codes`` (int64 array (h, w)).
    """
    panels = []
    keyed = []
    for name in records:
        match = _MODULE_NAME.search(name)
        if match is None:  # an MHPA module outside the stages: not a DualFormer layout
            continue
        keyed.append((int(match.group(1)), int(match.group(2)), name))
    for stage, block, name in sorted(keyed):
        if block and not all_blocks:
            continue
        codes = records[name]
        for head in range(codes.shape[0] if all_heads else 1):
            panels.append(dict(module=name, stage=stage, block=block, head=head,
                               num_heads=codes.shape[0], codes=codes[head].numpy()))
    return panels


def stage_stride(stage: int) -> int:
    """The stride of DualFormer's ``stage`` (0-based) against the input image.

    A stride-4 patch embedding, then a stride-2 downsampling before each later stage.

    Example:
        >>> [stage_stride(i) for i in range(4)]
        [4, 8, 16, 32]
    """
    if stage < 0:
        raise ValueError(f'stage must be >= 0, got {stage}')
    return 4 * 2**stage


def partition_capacity(backbone: torch.nn.Module) -> Dict[str, int]:
    """How many partitions each MHPA module of ``backbone`` has, by its module name.

    The names are those :func:`record_partitions` keys its codes by.

    Args:
        backbone (nn.Module): A DualFormer (or a model holding MHPA modules).

    Returns:
        dict: module name -> number of partitions per head.

    Example:
        >>> capacity = partition_capacity(DualFormer('t'))
        >>> capacity['stages.0.blocks.0.attn'], capacity['stages.3.blocks.0.attn']
        (8, 8)
    """
    return {name: int(module.num_partitions) for name, module in backbone.named_modules()
            if isinstance(module, PartitionAttention)}


def panel_title(panel: Dict, capacity: Optional[Dict[str, int]] = None) -> str:
    """The label of one partition panel of :func:`select_partition_panels`.

    Three lines: the stage (1-based) and its stride; the block and the head, of the module's
    heads; the partitions its tokens fill (of those it has, when ``capacity`` names the
    module) and MHPA's token grid (the stage's map after MHPA's downsampling).

    Args:
        panel (dict): One entry of :func:`select_partition_panels` (``num_heads`` included).
        capacity (dict, optional): Output of :func:`partition_capacity`.

    Returns:
        str: The title.

    Example:
        >>> codes = np.array([[0, 1], [1, 3]])
        >>> panel = dict(module='stages.1.blocks.0.attn', stage=1, block=0, head=1,
        ...              num_heads=2, codes=codes)
        >>> print(panel_title(panel, {'stages.1.blocks.0.attn': 8}))
        stage 2, stride 8
        block 1, head 2 of 2
        3 of 8 partitions, 2x2 tokens
    """
    used = len(np.unique(panel['codes']))
    limit = (capacity or {}).get(panel['module'])
    filled = f'{used} of {limit} partitions' if limit else f'{used} partitions'
    height, width = panel['codes'].shape
    return (f"stage {panel['stage'] + 1}, stride {stage_stride(panel['stage'])}\n"
            f"block {panel['block'] + 1}, head {panel['head'] + 1} of {panel['num_heads']}\n"
            f'{filled}, {height}x{width} tokens')


def partition_figure(image: np.ndarray, records: Dict[str, torch.Tensor],
                     all_heads: bool = False, all_blocks: bool = False, alpha: float = 0.55,
                     title: Optional[str] = None, columns: int = 5,
                     capacity: Optional[Dict[str, int]] = None) -> Tuple['Figure', List[Dict]]:
    """A labelled grid of the LSH partitions over the image, as in the paper's Figure 6.

    Without ``all_heads`` the input and the panels fill rows of ``columns`` (by default one
    row: the input and the first block of the four stages). With ``all_heads`` each drawn block
    gets a row: the input, then one panel per head. The input's panel is titled with its size;
    each partition panel with :func:`panel_title`.

    Args:
        image (np.ndarray): RGB uint8 image (H, W, 3) the codes were computed on.
        records (dict): Output of :func:`record_partitions`.
        all_heads (bool): Draw every head. Defaults to False.
        all_blocks (bool): Draw every block of every stage. Defaults to False.
        alpha (float): Opacity of the partition colours. Defaults to 0.55.
        title (str, optional): Figure title.
        columns (int): Panels per row without ``all_heads``. Defaults to 5.
        capacity (dict, optional): Output of :func:`partition_capacity`, to give each panel's
            partitions as "used of capacity". Defaults to None.

    Returns:
        tuple: The matplotlib ``Figure`` (not saved), and per partition panel, in drawing
        order: ``module``, ``stage``, ``block``, ``head`` (0-based), ``num_heads``,
        ``stride``, ``grid`` (h, w), ``num_partitions`` (the distinct codes in the panel),
        ``max_partitions`` (from ``capacity``, else None) and ``title``.

    Example:
        >>> net = DualFormer('t').eval()
        >>> records = record_partitions(net, torch.zeros(1, 3, 64, 96))
        >>> fig, panels = partition_figure(np.zeros((64, 96, 3), np.uint8), records,
        ...                                capacity=partition_capacity(net))
        >>> fig.axes[0].get_title()
        'input, 64x96'
        >>> print(fig.axes[1].get_title())
        stage 1, stride 4
        block 1, head 1 of 1
        1 of 8 partitions, 4x6 tokens
        >>> [p['stride'] for p in panels], panels[0]['grid']
        ([4, 8, 16, 32], [4, 6])
    """
    # The object-oriented API draws without pyplot's global state or a display.
    from matplotlib.figure import Figure

    panels = select_partition_panels(records, all_heads, all_blocks)
    if not panels:
        raise ValueError('records hold no stages.<i>.blocks.<j>.attn module; pass the '
                         'output of record_partitions on a DualFormer backbone')
    if columns < 2:
        raise ValueError(f'columns must be >= 2 (the input and one panel), got {columns}')
    if all_heads:
        rows: List[List[Optional[Dict]]] = []
        for panel in panels:
            if panel['head'] == 0:
                rows.append([None])  # None stands for the input image
            rows[-1].append(panel)
    else:
        flat: List[Optional[Dict]] = [None] + panels
        rows = [flat[i:i + columns] for i in range(0, len(flat), columns)]
    num_cols = max(len(row) for row in rows)
    height, width = image.shape[:2]
    cell = 2.6
    # Constrained layout leaves room for the suptitle, which tight_layout ignores; each row
    # has room for its panels' three title lines, and a gap keeps them off the suptitle.
    fig = Figure(figsize=(cell * num_cols, cell * len(rows) * height / width + 0.7 * len(rows)
                          + (0.25 * (title.count('\n') + 1) if title else 0)),
                 layout='constrained')
    fig.get_layout_engine().set(h_pad=0.1)
    axes = fig.subplots(len(rows), num_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(num_cols):
            ax = axes[r][c]
            ax.axis('off')
            if c >= len(row):
                continue
            panel = row[c]
            if panel is None:
                ax.imshow(image, interpolation='nearest')
                ax.set_title(f'input, {height}x{width}', fontsize=9)
                continue
            # Nearest: a partition's border stays where the token grid puts it.
            ax.imshow(overlay_codes(image, panel['codes'], alpha), interpolation='nearest')
            panel['title'] = panel_title(panel, capacity)
            ax.set_title(panel['title'], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, [dict(module=p['module'], stage=p['stage'], block=p['block'], head=p['head'],
                      num_heads=p['num_heads'], stride=stage_stride(p['stage']),
                      grid=list(p['codes'].shape),
                      num_partitions=int(len(np.unique(p['codes']))),
                      max_partitions=(capacity or {}).get(p['module']), title=p['title'])
                 for p in panels]


def draw_partition_grid(image: np.ndarray, records: Dict[str, torch.Tensor], out_file: str,
                        all_heads: bool = False, all_blocks: bool = False, alpha: float = 0.55,
                        title: Optional[str] = None, columns: int = 5,
                        capacity: Optional[Dict[str, int]] = None) -> List[Dict]:
    """Write the figure of :func:`partition_figure` to ``out_file`` (its folder is created).

    Args:
        image (np.ndarray): RGB uint8 image (H, W, 3) the codes were computed on.
        records (dict): Output of :func:`record_partitions`.
        out_file (str): Image file to write.
        all_heads (bool): Draw every head. Defaults to False.
        all_blocks (bool): Draw every block of every stage. Defaults to False.
        alpha (float): Opacity of the partition colours. Defaults to 0.55.
        title (str, optional): Figure title.
        columns (int): Panels per row without ``all_heads``. Defaults to 5.
        capacity (dict, optional): Output of :func:`partition_capacity`. Defaults to None.

    Returns:
        list[dict]: The panels of :func:`partition_figure`.

    Example:
        >>> import tempfile
        >>> net = DualFormer('t').eval()
        >>> records = record_partitions(net, torch.zeros(1, 3, 64, 64))
        >>> panels = draw_partition_grid(np.zeros((64, 64, 3), np.uint8), records,
        ...                              tempfile.mktemp(suffix='.png'), all_heads=True)
        >>> [p['head'] for p in panels if p['stage'] == 3]
        [0, 1, 2, 3, 4]
    """
    fig, panels = partition_figure(image, records, all_heads, all_blocks, alpha, title,
                                   columns, capacity)
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=100)
    return panels


@contextlib.contextmanager
def quiet_mmengine() -> Iterator[None]:
    """Hide mmengine's INFO lines (init_weights dumps one per tensor) inside the block."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def find_dualformer(model: torch.nn.Module) -> DualFormer:
    """The model itself or its ``backbone`` when that is a :class:`DualFormer`."""
    backbone = model if isinstance(model, DualFormer) else getattr(model, 'backbone', None)
    if not isinstance(backbone, DualFormer):
        raise ValueError(f'the model ({type(model).__name__}) has no DualFormer backbone; '
                         'use a config of configs/mmpretrain, configs/mmdet or configs/mmseg')
    return backbone


def load_backbone_weights(backbone: torch.nn.Module, checkpoint: str) -> int:
    """Load a classifier, detector, segmentor or backbone-only checkpoint into ``backbone``.

    Keys under ``backbone.`` lose that prefix; the other parts of a full model (head, neck)
    are skipped. Loading goes through mmengine's ``load_checkpoint`` (``weights_only``, with
    the allowlist ``dualformer_mm`` installs on import).

    Args:
        backbone (nn.Module): The backbone to load into.
        checkpoint (str): Path of the checkpoint.

    Returns:
        int: Number of the backbone's tensors the checkpoint provided.
    """
    from mmengine.runner import load_checkpoint

    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'--checkpoint: no such file {checkpoint!r}')
    revise = [(r'^module\.', ''), (r'^backbone\.', '')]
    loaded = load_checkpoint(backbone, checkpoint, map_location='cpu', strict=False,
                             revise_keys=revise)
    state = loaded.get('state_dict', loaded)
    keys = set()
    for key in state:
        for pattern, repl in revise:
            key = re.sub(pattern, repl, key)
        keys.add(key)
    matched = len(keys & set(backbone.state_dict()))
    if not matched:
        raise ValueError(f'--checkpoint {checkpoint!r} holds no weights of this backbone '
                         f'({type(backbone).__name__}); is it a checkpoint of this model?')
    return matched


def build_backbone(config: Union[str, Config], checkpoint: Optional[str] = None) -> DualFormer:
    """Build the DualFormer backbone of a config of this repository, in eval mode.

    The whole model is built in its toolbox's scope (so any of configs/mmpretrain, mmdet,
    mmseg works), initialised with its ``init_cfg`` (as the Runner would before training), and
    the checkpoint, if any, loaded on top.

    Args:
        config (str | Config): Config file or object.
        checkpoint (str, optional): Checkpoint to load (see :func:`load_backbone_weights`).

    Returns:
        DualFormer: The backbone, in eval mode.
    """
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    with quiet_mmengine():
        backbone = find_dualformer(build_model_from_cfg(cfg))
        backbone.init_weights()
    if checkpoint:
        load_backbone_weights(backbone, checkpoint)
    return backbone.eval()


def config_normalization(
        config: Union[str, Config]) -> Tuple[Tuple[float, ...], Tuple[float, ...], bool]:
    """Mean, std and channel order of a config's data preprocessor.

    Looks at ``model.data_preprocessor`` (mmdet, mmseg) then the top-level
    ``data_preprocessor`` (mmpretrain), and falls back to ImageNet's mean and std.

    Returns:
        tuple: ``mean`` and ``std`` (0-255, per channel) and ``rgb``: whether the model takes
        RGB input (False when the preprocessor keeps OpenCV's BGR order).
    """
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    for preprocessor in (cfg.model.get('data_preprocessor'), cfg.get('data_preprocessor')):
        if preprocessor and preprocessor.get('mean') is not None:
            rgb = bool(preprocessor.get('to_rgb', preprocessor.get('bgr_to_rgb', False)))
            return (tuple(float(v) for v in preprocessor['mean']),
                    tuple(float(v) for v in preprocessor.get('std', (1.0, 1.0, 1.0))), rgb)
    return IMAGENET_MEAN, IMAGENET_STD, True


def preprocess_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                     rgb: bool = True) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float tensor (1, 3, H, W), as the preprocessor does."""
    pixels = image if rgb else image[..., ::-1]  # images are read BGR; the model never flipped
    tensor = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return ((tensor - mean_t) / std_t).unsqueeze(0)


def synthetic_image(size: Tuple[int, int], seed: int = 0, num_objects: int = 3) -> np.ndarray:
    """A synthetic scene of the demo's shapes (``dualformer_mm.demo``), RGB uint8 (H, W, 3)."""
    from dualformer_mm.demo.synthetic import render_scene

    height, width = size
    side = max(height, width)
    scene, _ = render_scene(np.random.RandomState(seed), side, num_objects,
                            (side * 0.12, side * 0.3))
    if (height, width) != (side, side):
        scene = np.asarray(Image.fromarray(scene).resize((width, height), Image.BILINEAR))
    return scene
