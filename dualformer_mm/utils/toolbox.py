# Copyright (c) dualformer-mm contributors.
"""Which OpenMMLab toolbox a config belongs to, with clear errors for the wrong one.

Every config of this repository names its toolbox in ``default_scope`` (the tasks of paper
section 4: ``mmpretrain`` for ImageNet, ``mmdet`` for COCO, ``mmseg`` for ADE20K). The tools
check it before building anything, so a detection config given to the classification demo, or
a config whose toolbox is not installed, fails with a message that says what is accepted and
which tool or package to use, not deep inside another toolbox's registry.
"""
import argparse
import importlib.util
from typing import Dict, Optional, Sequence

from mmengine.config import Config

# default_scope -> (pip requirement, what the configs are for, the demo for that task).
TOOLBOXES: Dict[str, Dict[str, str]] = {
    'mmpretrain': dict(package='mmpretrain==1.2.0', task='classification',
                       demo='tools/demo/image_demo_cls.py'),
    'mmdet': dict(package='mmdet==3.3.0', task='detection', demo='tools/demo/image_demo_det.py'),
    'mmseg': dict(package='mmsegmentation==1.2.2', task='segmentation',
                  demo='tools/demo/image_demo_seg.py'),
}


def config_toolbox(cfg: Config, path: str, accepted: Optional[Sequence[str]] = None,
                   tool: Optional[str] = None) -> str:
    """Return the toolbox of ``cfg`` after checking it is accepted and installed.

    Args:
        cfg (Config): A loaded config.
        path (str): Its file, for the messages.
        accepted (Sequence[str], optional): The ``default_scope`` values the caller takes.
            Defaults to all of :data:`TOOLBOXES`.
        tool (str, optional): The caller's name, for the messages.

    Returns:
        str: ``cfg.default_scope``.

    Raises:
        ValueError: ``default_scope`` is missing or not accepted by the caller.
        ImportError: The toolbox is not installed.

    Example:
        >>> cfg = Config(dict(default_scope='mmdet'))
        >>> config_toolbox(cfg, 'x.py', accepted=['mmpretrain'], tool='cls demo')
        Traceback (most recent call last):
        ...
        ValueError: x.py is a detection config (default_scope='mmdet'), but cls demo accepts ...
    """
    accepted = tuple(accepted or TOOLBOXES)
    scope = cfg.get('default_scope')
    who = tool or 'this tool'
    if scope not in TOOLBOXES:
        raise ValueError(f'{path}: default_scope must be one of {tuple(TOOLBOXES)} (it picks '
                         f'the toolbox), got {scope!r}')
    if scope not in accepted:
        kinds = ', '.join(f"{TOOLBOXES[s]['task']} ({s})" for s in accepted)
        raise ValueError(
            f"{path} is a {TOOLBOXES[scope]['task']} config (default_scope={scope!r}), but "
            f"{who} accepts {kinds} configs; use {TOOLBOXES[scope]['demo']} for this one")
    if importlib.util.find_spec(scope) is None:
        raise ImportError(f"{path} needs {scope} (default_scope={scope!r}), which is not "
                          f"installed: pip install {TOOLBOXES[scope]['package']}")
    return scope


def require_toolbox_config(parser: argparse.ArgumentParser, path: str, scope: str) -> None:
    """Exit with ``parser``'s usage error unless ``path`` is an installed ``scope`` config."""
    try:
        config_toolbox(Config.fromfile(path), path, accepted=[scope], tool=parser.prog)
    except (ValueError, ImportError) as error:
        parser.error(str(error))
