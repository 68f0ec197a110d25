# Copyright (c) dualformer-mm contributors.
"""A small, deterministic synthetic dataset in the formats the three toolboxes read.

Used by ``make demo`` (the paper's three tasks, section 4, on data the project makes itself):
shapes of four classes, each with its own outline, colour family and texture, on varied
backgrounds, written as

- an ImageNet-style folder (``cls/{train,val}/<class>/*.png`` + ``cls/meta/{train,val}.txt``),
- COCO instances (``coco/{train,val}/*.jpg`` + ``coco/annotations/instances_{train,val}.json``
  with polygon masks),
- ADE20K-style segmentation (``ade/images/{training,validation}/*.jpg`` +
  ``ade/annotations/{training,validation}/*.png``; label 0 is "other", as ADE20K's
  ``reduce_zero_label`` expects, 1 is the background and 2.. the shapes).

Everything is drawn from one seed, so two runs write identical files.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('disc', 'square', 'triangle', 'cross')
# Base colour of each class (RGB); instances jitter around it.
CLASS_COLOURS = ((220, 50, 40), (40, 170, 60), (40, 80, 220), (230, 190, 30))
SEG_CLASSES = ('background', ) + CLASSES

Polygon = List[Tuple[float, float]]


def shape_polygon(label: int, cx: float, cy: float, radius: float, angle: float) -> Polygon:
    """Outline of a shape of class ``label`` centred at (cx, cy)."""
    name = CLASSES[label]
    if name == 'disc':
        corners = [(radius, 2 * math.pi * i / 32) for i in range(32)]
    elif name == 'square':
        corners = [(radius, angle + math.pi / 4 + i * math.pi / 2) for i in range(4)]
    elif name == 'triangle':
        corners = [(radius, angle + i * 2 * math.pi / 3) for i in range(3)]
    else:  # a plus-shaped cross: 12 corners, arms a third of the size wide
        arm, half = radius, radius / 3
        pts = [(half, arm), (-half, arm), (-half, half), (-arm, half), (-arm, -half),
               (-half, -half), (-half, -arm), (half, -arm), (half, -half), (arm, -half),
               (arm, half), (half, half)]
        corners = [(math.hypot(x, y), math.atan2(y, x) + angle) for x, y in pts]
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for r, t in corners]


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    """A random two-colour gradient with noise, (size, size, 3) float."""
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return img + rng.normal(0, 8, img.shape)


def _texture(rng: np.random.RandomState, label: int, size: int) -> np.ndarray:
    """The fill of a class-``label`` object: solid, stripes, checker or dots."""
    colour = np.clip(np.array(CLASS_COLOURS[label]) + rng.uniform(-25, 25, 3), 0, 255)
    dark = colour * 0.45
    yy, xx = np.mgrid[0:size, 0:size]
    name = CLASSES[label]
    if name == 'disc':
        pattern = np.zeros((size, size), bool)
    elif name == 'square':
        pattern = ((xx + yy) // 4) % 2 == 0
    elif name == 'triangle':
        pattern = ((xx // 5) + (yy // 5)) % 2 == 0
    else:
        pattern = ((xx % 6) < 2) & ((yy % 6) < 2)
    return np.where(pattern[..., None], dark, colour)


def _polygon_mask(polygon: Polygon, size: int) -> np.ndarray:
    """Rasterise a polygon to a boolean (size, size) mask."""
    canvas = Image.new('L', (size, size), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_scene(rng: np.random.RandomState, size: int, num_objects: int,
                 radius: Tuple[float, float]) -> Tuple[np.ndarray, List[Dict]]:
    """Draw ``num_objects`` shapes on a background.

    Later shapes occlude earlier ones; a shape less than half visible is dropped so every
    annotation is a clear instance.

    Returns:
        tuple: uint8 image (size, size, 3) and a list of dicts with ``label``, ``polygon``
        and ``mask`` (the visible part).
    """
    img = _background(rng, size)
    objects = []
    for _ in range(num_objects):
        label = int(rng.randint(len(CLASSES)))
        r = rng.uniform(*radius)
        cx, cy = rng.uniform(r, size - r, 2)
        polygon = shape_polygon(label, cx, cy, r, rng.uniform(0, 2 * math.pi))
        mask = _polygon_mask(polygon, size)
        img = np.where(mask[..., None], _texture(rng, label, size), img)
        for obj in objects:
            obj['mask'] &= ~mask
        objects.append(dict(label=label, polygon=polygon, mask=mask, area=mask.sum()))
    kept = [o for o in objects if o['mask'].sum() >= 0.5 * o['area'] and o['mask'].any()]
    return np.clip(img, 0, 255).astype(np.uint8), kept


def _save(img: np.ndarray, path: str) -> None:
    """Write an image, creating its folder."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, **({'quality': 95} if path.endswith('.jpg') else {}))


def make_classification(root: str, rng: np.random.RandomState, counts: Dict[str, int],
                        size: int = 64) -> None:
    """ImageNet-style folders and ``meta/<split>.txt`` files of ``path label`` lines."""
    for split, count in counts.items():
        lines = []
        for i in range(count):
            label = i % len(CLASSES)  # balanced classes
            img = _background(rng, size)
            r = rng.uniform(size * 0.25, size * 0.42)
            cx, cy = rng.uniform(r, size - r, 2)
            mask = _polygon_mask(
                shape_polygon(label, cx, cy, r, rng.uniform(0, 2 * math.pi)), size)
            img = np.where(mask[..., None], _texture(rng, label, size), img)
            rel = f'{split}/{CLASSES[label]}/{split}_{i:05d}.png'
            _save(np.clip(img, 0, 255).astype(np.uint8), osp.join(root, rel))
            lines.append(f'{rel} {label}')
        os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')


def make_detection(root: str, rng: np.random.RandomState, counts: Dict[str, int],
                   size: int = 160) -> None:
    """COCO instances JSON with polygon masks, one file per split."""
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    ann_id = 1
    for split, count in counts.items():
        images, annotations = [], []
        for i in range(count):
            img, objects = render_scene(rng, size, int(rng.randint(1, 4)), (14, 34))
            name = f'{split}_{i:05d}.jpg'
            _save(img, osp.join(root, split, name))
            images.append(dict(id=i + 1, file_name=name, height=size, width=size))
            for obj in objects:
                ys, xs = np.nonzero(obj['mask'])
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                annotations.append(dict(
                    id=ann_id, image_id=i + 1, category_id=obj['label'] + 1, iscrowd=0,
                    bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    area=float(obj['mask'].sum()),
                    segmentation=[[round(v, 2) for pt in obj['polygon'] for v in pt]]))
                ann_id += 1
        os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def make_segmentation(root: str, rng: np.random.RandomState, counts: Dict[str, int],
                      size: int = 128) -> None:
    """ADE20K-style jpg images and png label maps (1 = background, 2.. = shapes)."""
    for split, count in counts.items():
        for i in range(count):
            img, objects = render_scene(rng, size, int(rng.randint(1, 5)), (12, 30))
            label_map = np.ones((size, size), np.uint8)
            for obj in objects:
                label_map[obj['mask']] = obj['label'] + 2
            name = f'{split}_{i:05d}'
            _save(img, osp.join(root, 'images', split, name + '.jpg'))
            _save(label_map, osp.join(root, 'annotations', split, name + '.png'))


def make_demo_datasets(root: str = 'data/demo', seed: int = 0,
                       scale: float = 1.0) -> Dict[str, str]:
    """Write the three demo datasets under ``root``.

    Args:
        root (str): Output folder. Defaults to ``'data/demo'``.
        seed (int): Seed of everything drawn. Defaults to 0.
        scale (float): Multiplies the number of images (the tests use a small one).

    Returns:
        dict: The folder of each task's data, keyed ``cls``, ``det`` and ``seg``.

    Example:
        >>> import tempfile
        >>> paths = make_demo_datasets(tempfile.mkdtemp(), scale=0.02)
        >>> sorted(paths)
        ['cls', 'det', 'seg']
    """
    if scale <= 0:
        raise ValueError(f'scale must be > 0, got {scale}')

    def n(count: int) -> int:
        return max(4, int(round(count * scale)))

    # One generator per task, so changing one task's size leaves the others' files alone.
    paths = dict(cls=osp.join(root, 'cls'), det=osp.join(root, 'coco'), seg=osp.join(root, 'ade'))
    make_classification(paths['cls'], np.random.RandomState(seed),
                        dict(train=n(480), val=n(120)))
    make_detection(paths['det'], np.random.RandomState(seed + 1), dict(train=n(240), val=n(40)))
    make_segmentation(paths['seg'], np.random.RandomState(seed + 2),
                      dict(training=n(240), validation=n(40)))
    return paths


def class_names(task: str) -> Sequence[str]:
    """Class names of a demo task (``cls``, ``det`` or ``seg``)."""
    if task not in ('cls', 'det', 'seg'):
        raise ValueError(f"task must be one of 'cls', 'det', 'seg', got {task!r}")
    return SEG_CLASSES if task == 'seg' else CLASSES
