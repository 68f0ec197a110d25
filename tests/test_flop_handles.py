"""Our ops' FLOP handles reach mmengine's analyzers: our tools through the public
``FlopAnalyzer.set_op_handle``, the toolboxes' ``get_model_complexity_info`` through the default
table that ``import dualformer_mm`` extends (docs/reliability.md)."""
import pytest
import torch
from mmengine.analysis import FlopAnalyzer, complexity_analysis, get_model_complexity_info

from dualformer_mm import ops
from dualformer_mm.utils import count_complexity


class Hash(torch.nn.Module):
    """The fused hash on the pixels of an image: 4 channels projected on 3 planes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.lsh_hash(x.flatten(2).transpose(1, 2), torch.ones(4, 3))


@pytest.fixture
def fused():
    if ops.load_extension() is None:
        pytest.fail('dualformer_mm._ext is not importable: the fused ops are not traced')
    with ops.use_backend('ext'):
        yield


def _total(analyzer: FlopAnalyzer) -> int:
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total()


def test_count_complexity_passes_the_handles_itself(fused, monkeypatch):
    expected = 5 * 7 * 4 * 3  # pixels x channels x planes
    assert count_complexity(Hash(), shape=(5, 7), in_channels=4)[1] == expected
    # Without our entries in mmengine's private default table: the same count, while a plain
    # analyzer (the control) no longer counts the hash.
    table = {name: handle for name, handle in
             complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.items()
             if not name.startswith('dualformer::')}
    monkeypatch.setattr(complexity_analysis, '_DEFAULT_SUPPORTED_FLOP_OPS', table)
    assert count_complexity(Hash(), shape=(5, 7), in_channels=4)[1] == expected
    assert _total(FlopAnalyzer(Hash(), (torch.rand(1, 4, 5, 7), ))) == 0


def test_toolbox_complexity_info_counts_our_ops(fused):
    """mmengine's get_model_complexity_info, which the toolboxes' get_flops tools call."""
    info = get_model_complexity_info(Hash(), inputs=(torch.rand(1, 4, 5, 7), ),
                                     show_table=False, show_arch=False)
    assert info['flops'] == 5 * 7 * 4 * 3
