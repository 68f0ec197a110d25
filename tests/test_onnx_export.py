"""ONNX export of the backbone, classifier, segmentor and detector backbone+FPN
(tools/deployment/pytorch2onnx.py), each checked in ONNX Runtime against the toolbox's own
PyTorch computation made to use the partitions ONNX Runtime chose; that check against an image
with a partition tie, on which the two runtimes partition differently, and against wrong
exports (a perturbed weight, perturbed hyperplanes, a wrong translation of a partition op).

In make test (the exports are ``slow``: tens of seconds each), the repository's T configs with
a DualFormer of one block per stage (``tests.utils.TINY_ARCH``): a dynamic backbone export
checked where an MHPA sees fewer tokens than partitions (64x96: 6 tokens for 8 partitions) and
where all see many more (224x160 at least 35, up to 140); the segmentor's whole inference and
the detector's backbone+FPN at 64x64; the classifier through the command line with a
checkpoint. The TorchScript exporter of torch 2.1-2.4 on DualFormer-T. Every size, every part:
the ``full`` sweep (make test-full).
"""
import doctest
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dualformer_mm import compat
from dualformer_mm.utils import build_model_from_cfg
from tests.utils import ARCHS, TINY_ARCH, load_script

pytest.importorskip('onnx', reason='onnx is not installed (requirements/tests.txt pins it)')
ort = pytest.importorskip('onnxruntime',
                          reason='onnxruntime is not installed (requirements/tests.txt pins it)')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools', 'deployment')
# After the skips: the tensorrt module imports onnx.
from dualformer_mm.deployment import onnx_export, partitions, targets, tensorrt  # noqa: E402

pytorch2onnx = load_script('tools/deployment/pytorch2onnx.py')

CLS = osp.join(ROOT, 'configs', 'mmpretrain', 'dualformer_{}_in1k.py')
SEG = osp.join(ROOT, 'configs', 'mmseg', 'upernet_dualformer_{}_ade20k.py')
DET = osp.join(ROOT, 'configs', 'mmdet', 'mask_rcnn_dualformer_{}_1x.py')
# Outputs are O(1); ONNX Runtime and PyTorch differ by float32 rounding (1e-7..1e-6 measured).
ATOL = 1e-4


def _tiny_config(tmp_path, config: str) -> str:
    """``config`` (a T config of the repository) with one block per stage, its heads' input
    channels to match. Every size exports the same operators (the ``full`` sweep checks each);
    the four exports below took 188 s with T's two to four blocks per stage and 83 s with this
    (2-core AMD EPYC, two xdist workers)."""
    channels = TINY_ARCH['channels']
    heads = {CLS.format('t'): dict(head=dict(in_channels=channels[-1])),
             SEG.format('t'): dict(decode_head=dict(in_channels=channels),
                                   auxiliary_head=dict(in_channels=channels[2])),
             DET.format('t'): dict(neck=dict(in_channels=channels))}[config]
    model = dict(backbone=dict(arch=dict(TINY_ARCH, _delete_=True)), **heads)
    path = tmp_path / f'tiny_{osp.basename(config)}'
    path.write_text(f'_base_ = [{config!r}]\nmodel = {model!r}\n')
    return str(path)


def _randomise_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics away from 0/1, so that the check sees them used."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def _seeded(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tie_free(target, shape, draws=16):
    """A seeded image of ``shape`` with no token near an LSH hyperplane, for a comparison in
    which each runtime computes its own partitions: on such an image they partition alike."""
    for seed in range(draws):
        images = _seeded(shape, seed)
        with torch.no_grad(), partitions.partition_statistics(target.backbone) as stats:
            target.reference(images)
        if stats.get('margin', 1.0) >= partitions.TIE_MARGIN:
            return images
    raise AssertionError(f'{draws} seeded images of {shape} all have a near tie')


def _export_and_check(target, tmp_path, shape, dynamic=False, sizes=None, exporter='auto'):
    """Export with the codes outputs and check at every size with ONNX Runtime's codes."""
    _randomise_statistics(target.module)
    path = str(tmp_path / 'model.onnx')
    used, names = onnx_export.export_checked(target, _seeded(shape), path, dynamic=dynamic,
                                             exporter=exporter)
    assert names == [partitions.CODES_PREFIX + name
                     for name in partitions.partition_attentions(target.backbone)]
    session = onnx_export.session(path)
    results = [onnx_export.check(target, path, _seeded(s, seed), session)
               for seed, s in enumerate(sizes or [shape])]
    for result in results:
        assert result.imposed and len(result.codes) == len(names), result.describe()
    return used, path, results


@pytest.mark.slow
def test_backbone_dynamic_export_in_both_partition_regimes(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, CLS.format('t')), part='backbone')
    assert target.output_names == ['stage1', 'stage2', 'stage3', 'stage4']
    _, path, (few, many, batch3) = _export_and_check(
        target, tmp_path, (2, 3, 64, 96), dynamic=True,
        sizes=[(2, 3, 64, 96), (1, 3, 224, 160), (3, 3, 128, 64)])
    assert few.min_tokens < few.partitions == 8  # stage 4: a 2x3 map, 6 tokens
    assert many.min_tokens >= 4 * many.partitions and many.max_tokens == 140
    for result in (few, many, batch3):
        assert result.passed(ATOL), result.describe()
        assert result.max_abs_ref > 0.1  # the outputs are not all near zero
    # The partition ops became native ONNX operators (their reference decomposition).
    types = onnx_export.op_types(path)
    assert {'ScatterElements', 'ScatterND', 'Einsum'} <= set(types)
    assert not [op for op in types if 'dualformer' in op.lower()]
    # For TensorRT's parser: no ScatterND with a reduction, the same numbers.
    assert tensorrt.rewrite_file(path) == (types['ScatterND'], 0)
    types_trt = onnx_export.op_types(path)
    assert 'ScatterND' not in types_trt
    assert types_trt['ScatterElements'] == types['ScatterElements'] + types['ScatterND']
    session = onnx_export.session(path)
    for shape in ((2, 3, 64, 96), (1, 3, 224, 160)):
        result = onnx_export.check(target, path, _seeded(shape), session)
        assert result.imposed and result.passed(ATOL), result.describe()


@pytest.mark.slow
def test_segmentor_export_is_the_whole_inference(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, SEG.format('t')))
    assert target.output_names == ['seg_logits']
    _, path, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64))
    assert result.passed(ATOL), result.describe()
    # Resized to the input inside the graph: 150 ADE20K classes at 64x64.
    session = onnx_export.session(path)
    assert session.run(None, {'images': torch.randn(1, 3, 64, 64).numpy()})[0].shape == \
        (1, 150, 64, 64)


@pytest.mark.slow
def test_torchscript_segmentor_at_a_size_its_pooling_bins_do_not_divide(tmp_path):
    # 96x128 gives a 3x4 map at stride 32, which the pyramid pooling's 2, 3 and 6 bins do not
    # divide: the TorchScript exporter's own translation refuses that, the exact averaging
    # matrices export.
    target = targets.build_target(_tiny_config(tmp_path, SEG.format('t')))
    used, _, (result, ) = _export_and_check(target, tmp_path, (1, 3, 96, 128),
                                            exporter='torchscript')
    assert used == 'torchscript' and result.passed(ATOL), result.describe()


@pytest.mark.slow
def test_detector_export_is_backbone_and_fpn(tmp_path):
    target = targets.build_target(_tiny_config(tmp_path, DET.format('t')))
    assert target.output_names == [f'fpn{i}' for i in range(5)] and target.size_divisor == 32
    # The --help note names the deploy config of the whole detector, which exists.
    deploy_cfgs = re.findall(r'configs/deploy/\S+\.py', targets.DETECTOR_HEADS_NOTE)
    assert deploy_cfgs and all(osp.exists(osp.join(ROOT, c)) for c in deploy_cfgs)
    _, path, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64))
    assert result.passed(ATOL), result.describe()
    # The deployed file: the FPN maps alone.
    deployed = str(tmp_path / 'deployed.onnx')
    assert onnx_export.strip_codes(path, deployed) == 4
    outs = onnx_export.session(deployed).run(None, {'images': torch.randn(1, 3, 64, 64).numpy()})
    assert [o.shape for o in outs] == [(1, 256, 16, 16), (1, 256, 8, 8), (1, 256, 4, 4),
                                       (1, 256, 2, 2), (1, 256, 1, 1)]


@pytest.mark.slow
def test_command_line_classifier_with_checkpoint(tmp_path):
    config = _tiny_config(tmp_path, CLS.format('t'))
    classifier = _randomise_statistics(build_model_from_cfg(config)).eval()
    checkpoint, out = str(tmp_path / 'cls.pth'), str(tmp_path / 'cls.onnx')
    torch.save(dict(meta=dict(epoch=1), state_dict=classifier.state_dict()), checkpoint)
    result = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'pytorch2onnx.py'), config, checkpoint,
         '--out', out, '--shape', '64', '64'], cwd=ROOT, capture_output=True, text=True,
        timeout=900, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'classifier logits' in result.stdout and f'loaded {checkpoint}' in result.stdout
    assert 'opset 18' in result.stdout and 'max |onnxruntime - pytorch|' in result.stdout
    assert "with ONNX Runtime's partitions" in result.stdout
    # The file written has no codes outputs and holds the checkpoint's weights.
    assert [o.name for o in onnx_export.session(out).get_outputs()] == ['logits']
    x = _tie_free(targets.build_target(config, checkpoint), (1, 3, 64, 64))
    got = onnx_export.session(out).run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        want = classifier(x, mode='tensor')
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=ATOL)


def test_torchscript_exporter(tmp_path):
    # The only exporter of torch 2.1-2.4; forced here on this torch.
    target = targets.build_target(CLS.format('t'), part='backbone')
    used, _, (result, ) = _export_and_check(target, tmp_path, (1, 3, 64, 64),
                                            exporter='torchscript')
    assert used == 'torchscript'
    assert result.passed(ATOL), result.describe()


def test_bad_requests_name_what_is_accepted(capsys):
    with pytest.raises(ValueError, match=r"--part must be one of \('auto', 'backbone', "
                       r"'classifier'\) for a mmpretrain config, got 'segmentor'"):
        targets.build_target(CLS.format('t'), part='segmentor')
    assert pytorch2onnx.main([DET.format('t'), '--out', 'x.onnx', '--shape', '100', '96']) == 2
    assert 'multiples of 32' in capsys.readouterr().err
    assert pytorch2onnx.main([CLS.format('t'), '--out', 'x.onnx', '--shape', '65', '64',
                              '--dynamic']) == 2
    assert '--dynamic takes sides that are multiples of 32' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pytorch2onnx.parse_args([CLS.format('t'), '--out', 'x.onnx', '--shape', '64', '64',
                                 '--check-shape', '96', '96'])
    assert '--check-shape needs --dynamic' in capsys.readouterr().err
    if not compat.HAS_DYNAMO_ONNX_EXPORT:
        with pytest.raises(onnx_export.DeploymentError, match='needs torch >= 2.5'):
            onnx_export.resolve_exporter('dynamo')
    assert not osp.exists('x.onnx')


def _token_near_plane(attn, cos=1e-4):
    """(2, heads, 6, d) random tokens; token 3 of head 0 of image 1 at ``cos`` to plane 1."""
    heads, dims, _ = attn.planes.shape
    tokens = torch.randn(2, heads, 6, dims)
    normal = attn.planes[0, :, 1] / attn.planes[0, :, 1].norm()
    along = torch.randn(dims)
    along -= (along @ normal) * normal
    tokens[1, 0, 3] = 5 * (along / along.norm() + cos * normal) / (1 + cos**2) ** 0.5
    return tokens


def test_margin_is_the_smallest_cos_of_a_token_to_a_plane():
    from dualformer_mm import DualFormer, PartitionAttention
    torch.manual_seed(0)
    net = DualFormer(TINY_ARCH).eval()
    attn = next(m for m in net.modules() if isinstance(m, PartitionAttention))
    tokens = _token_near_plane(attn)  # the random others are far from any plane
    plain = attn.partition_codes(tokens)
    with partitions.partition_statistics(net) as stats:
        recorded = attn.partition_codes(tokens)
    assert stats['margin'] == pytest.approx(1e-4, rel=1e-2)  # float32 tokens
    assert stats['min_tokens'] == stats['max_tokens'] == 6 and stats['partitions'] == 8
    assert torch.equal(recorded, plain) and 'partition_codes' not in vars(attn)
    # K-Means partitions have no planes: no margin.
    kmeans = DualFormer(TINY_ARCH, attn_cfg=dict(partition='kmeans')).eval()
    with partitions.partition_statistics(kmeans) as stats:
        kmeans(torch.randn(1, 3, 32, 32))
    assert 'margin' not in stats and stats['partitions'] == 8


def test_imposed_codes_are_used_and_their_disagreement_measured():
    from dualformer_mm import DualFormer
    torch.manual_seed(0)
    net = DualFormer(TINY_ARCH).eval()
    names = list(partitions.partition_attentions(net))
    attn = partitions.partition_attentions(net)[names[0]]
    tokens = _token_near_plane(attn, cos=1e-6)
    own = attn.partition_codes(tokens)
    # The near token across plane 1 (bit 1), and another token across every plane.
    imposed = own.clone()
    imposed[1, 0, 3] ^= 2
    with partitions.watch_partitions(net, {names[0]: imposed}) as records:
        used = attn.partition_codes(tokens)
    assert torch.equal(used, imposed) and len(records) == 1
    record = records[0]
    assert (record.name, record.differing, record.total) == (names[0], 1, own.numel())
    assert record.differing_cos == pytest.approx(1e-6, rel=0.1)  # under TIE_MARGIN
    assert record.differing_cos < partitions.TIE_MARGIN
    imposed[0, 0, 0] ^= 7
    with partitions.watch_partitions(net, {names[0]: imposed}) as records:
        attn.partition_codes(tokens)
    assert records[0].differing == 2 and records[0].differing_cos > partitions.TIE_MARGIN
    # Codes that do not fit: a clear error naming the MHPA.
    with pytest.raises(ValueError, match=f'codes for MHPA {names[0]} have shape'):
        with partitions.watch_partitions(net, {names[0]: imposed[:1]}):
            attn.partition_codes(tokens)
    with pytest.raises(KeyError, match='not LSH MHPAs of the backbone'):
        with partitions.watch_partitions(net, {'stages.9.attn': imposed}):
            pass
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), partitions.watch_partitions(net) as records:
        net(x)
    with pytest.raises(KeyError, match=f'no codes given for MHPA {names[1]}'):
        with torch.no_grad(), partitions.watch_partitions(net, {names[0]: records[0].codes}):
            net(x)
    assert not [m for m in net.modules() if 'partition_codes' in vars(m)]


def test_verdict_needs_fidelity_and_codes_that_differ_only_at_near_ties():
    shape = (1, 3, 64, 64)
    tie = dict(codes={'stages.0.blocks.0.attn': (1, 512)}, differing_cos=4e-8)
    assert onnx_export.CheckResult(shape, 2e-7, 1.0, 4, 16, 8, 4e-8, True, **tie).passed(1e-4)
    assert not onnx_export.CheckResult(shape, 2e-3, 1.0, 4, 16, 8, 4e-8, True,
                                       **tie).passed(1e-4)
    # A code that differs on a plane no token was near: the file hashes otherwise.
    wrong = dict(tie, differing_cos=0.2)
    result = onnx_export.CheckResult(shape, 2e-7, 1.0, 4, 16, 8, 4e-8, True, **wrong)
    assert not result.passed(1e-4) and 'the hash differs' in result.describe()
    # Without ONNX Runtime's codes (a deployed file) there is no verdict.
    assert not onnx_export.CheckResult(shape, 2e-7, 1.0, 4, 16, 8, 1e-3).passed(1e-4)
    result = onnx_export.CheckResult(shape, 2e-7, 1.0, 4, 16, 8, 4e-8, True, **tie)
    assert result.near_tie and 'a near tie' in result.describe()
    assert result.describe_codes() == ['stages.0.blocks.0.attn: codes differ for 1 of 512 '
                                       'tokens (0.195%)']


@pytest.fixture(scope='module')
def checked_classifier(tmp_path_factory):
    """The one-block-per-stage classifier exported at 1x3x64x64 with its codes outputs (the
    TorchScript exporter: the fastest), and the deployed file written from it."""
    tmp_path = tmp_path_factory.mktemp('checked_classifier')
    torch.manual_seed(0)
    target = targets.build_target(_tiny_config(tmp_path, CLS.format('t')))
    _randomise_statistics(target.module)
    checked, deployed = str(tmp_path / 'with_codes.onnx'), str(tmp_path / 'deployed.onnx')
    onnx_export.export_checked(target, _seeded((1, 3, 64, 64)), checked, exporter='torchscript')
    mhpas = len(partitions.partition_attentions(target.backbone))
    assert onnx_export.strip_codes(checked, deployed) == mhpas == 4
    return target, checked, deployed


def _own_codes(target, images):
    with torch.no_grad(), partitions.watch_partitions(target.backbone) as records:
        target.reference(images)
    return {r.name: r.codes for r in records}


def _near_tie_image(target, session, trials=12):
    """An image on which ONNX Runtime and PyTorch put a token in different partitions.

    One pixel of a seeded image is bisected, over float32 values, to where PyTorch's code of
    some token changes: there that token lies within rounding of a plane, and at one of the
    two neighbouring values ONNX Runtime, whose float32 sums round otherwise, tends to put
    it on the other side. Trials take other pixels."""
    names = [o.name for o in session.get_outputs()]
    base = _seeded((1, 3, 64, 64))

    def differ(a, b):
        return [k for k in a if not torch.equal(a[k], b[k])]

    for trial in range(trials):
        gen = torch.Generator().manual_seed(100 + trial)
        c, i, j = (int(torch.randint(n, (1, ), generator=gen)) for n in (3, 64, 64))

        def image(value):
            x = base.clone()
            x[0, c, i, j] = value
            return x

        lo, hi = -4.0, 4.0
        codes_lo = _own_codes(target, image(lo))
        if not differ(codes_lo, _own_codes(target, image(hi))):
            continue
        while True:
            mid = float(np.float32((lo + hi) / 2))
            if mid in (lo, hi):
                break
            codes_mid = _own_codes(target, image(mid))
            if differ(codes_lo, codes_mid):
                hi = mid
            else:
                lo, codes_lo = mid, codes_mid
        for value in (lo, hi):
            x = image(value)
            got = dict(zip(names, session.run(None, {'images': x.numpy()})))
            ort_codes = {k[len(partitions.CODES_PREFIX):]: torch.from_numpy(v)
                         for k, v in got.items() if k.startswith(partitions.CODES_PREFIX)}
            if differ(_own_codes(target, x), ort_codes):
                return x
    raise AssertionError(f'no partition tie between the runtimes in {trials} trials')


@pytest.mark.slow
def test_a_partition_tie_fails_own_codes_and_passes_the_check(checked_classifier):
    target, checked, deployed = checked_classifier
    session = onnx_export.session(checked)
    x = _near_tie_image(target, session)
    # Each runtime with its own partitions, as the check compared before: far beyond rounding.
    own = onnx_export.check(target, deployed, x)
    assert not own.imposed and own.max_abs_diff > 10 * ATOL, own.describe()
    # With ONNX Runtime's partitions: rounding only, the differing codes at a near tie.
    result = onnx_export.check(target, checked, x, session)
    assert result.passed(ATOL) and result.max_abs_diff < 1e-6, result.describe()
    assert result.differing >= 1 and result.differing_cos < partitions.TIE_MARGIN
    assert result.near_tie and len(result.describe_codes()) >= 1
    # The deployed file is the checked graph: the same outputs to the bit.
    out = onnx_export.session(deployed).run(None, {'images': x.numpy()})[0]
    assert np.array_equal(out, session.run(['logits'], {'images': x.numpy()})[0])


def _perturbed(path, tmp_path, name, change):
    """``path`` with the initializer ``name`` changed by ``change`` (a numpy function)."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init).copy()), name))
    out = str(tmp_path / f'perturbed_{len(list(tmp_path.iterdir()))}.onnx')
    onnx.save(model, out)
    return out


@pytest.mark.slow
def test_wrong_exports_fail_the_check(checked_classifier, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper
    target, checked, _ = checked_classifier
    x = _seeded((1, 3, 64, 64), 3)
    assert onnx_export.check(target, checked, x).passed(ATOL)
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(checked).graph.initializer}
    # A weight 1.5 times what it is: the outputs differ.
    largest = max((n for n, a in arrays.items() if a.dtype == np.float32), key=lambda n:
                  arrays[n].size)
    result = onnx_export.check(target, _perturbed(checked, tmp_path, largest, lambda a: a * 1.5),
                               x)
    assert result.codes_agree and result.max_abs_diff > 10 * ATOL and not result.passed(ATOL)
    # The first MHPA's hyperplanes turned: PyTorch, using the file's partitions, gives the
    # same outputs, but the file's codes are not the model's far from any plane.
    attn = next(iter(partitions.partition_attentions(target.backbone).values()))
    planes = next(n for n, a in arrays.items() if a.shape == attn.planes.shape
                  and np.allclose(a, attn.planes.numpy()))
    turned = _perturbed(checked, tmp_path, planes, lambda a: np.concatenate(
        [-a[..., :1], a[..., 1:]], axis=-1).astype(a.dtype))
    result = onnx_export.check(target, turned, x)
    assert result.max_abs_diff <= ATOL and not result.codes_agree, result.describe()
    assert not result.passed(ATOL) and result.disagreement > 0.1
    # The partition sums exported as maxima (a wrong translation of index_add).
    original = onnx_export._index_add_symbolic

    def index_add_as_max(g, *args, **kwargs):
        out = original(g, *args, **kwargs)
        out.node().s_('reduction', 'max')
        return out

    monkeypatch.setitem(onnx_export._TORCHSCRIPT_SYMBOLICS, 'aten::index_add', index_add_as_max)
    wrong = str(tmp_path / 'sums_as_max.onnx')
    onnx_export.export_checked(target, x, wrong, exporter='torchscript')
    reductions = {a.s for n in onnx.load(wrong).graph.node if n.op_type == 'ScatterElements'
                  for a in n.attribute if a.name == 'reduction'}
    assert reductions == {b'max'}
    result = onnx_export.check(target, wrong, x)
    assert not result.passed(ATOL), result.describe()


def test_docstring_examples():
    import dualformer_mm.deployment as package
    for module in (package, onnx_export, partitions, tensorrt):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# (config, part, export shape, dynamic, check shapes) of the sweep: 1x3x128x160 holds 20 tokens
# per MHPA head for 8 partitions in stage 4, 2x3x64x96 fewer than 8.
EVERY_PART = {
    'classifier': (CLS, (1, 3, 128, 128), False, None),
    'segmentor': (SEG, (2, 3, 96, 128), True, [(1, 3, 128, 160), (2, 3, 64, 96)]),
    'detector': (DET, (1, 3, 128, 160), False, None),
    'backbone': (DET, (1, 3, 128, 160), False, None),
}


# One case per size and part, each with its own time limit: DualFormer-B's segmentor case
# took 11 minutes on 2 cores, the whole sweep 37.
@pytest.mark.full
@pytest.mark.timeout(2400)
@pytest.mark.parametrize('part', list(EVERY_PART))
@pytest.mark.parametrize('arch', ARCHS)
def test_every_size_and_part(arch, part, tmp_path):
    config, shape, dynamic, sizes = EVERY_PART[part]
    target = targets.build_target(config.format(arch), part=part)
    _, _, results = _export_and_check(target, tmp_path, shape, dynamic, sizes)
    for result in results:
        assert result.passed(ATOL * max(1.0, result.max_abs_ref)), \
            f'{arch} {part}: {result.describe()}'
    if part == 'segmentor':
        many, few = results
        assert many.min_tokens > 2 * many.partitions and few.min_tokens < few.partitions
