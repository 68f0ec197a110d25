"""Multi-Head Partition Attention (paper section 3.2) at module level: what each path computes.

The aggregation's input (the concatenated per-token features of both paths, captured with a
forward hook) is checked against the equations computed independently from MHPA's own
tokens, values and partition codes, for both readings of intra-partition attention.
"""
import pytest
import torch

from dualformer_mm import ops
from dualformer_mm.models import PartitionAttention

HEADS, DIMS, PARTS = 2, 32, 4
IMPORTANCE = ['partition', 'joint']


def run_and_capture(attn: PartitionAttention, x: torch.Tensor) -> dict:
    """Run ``attn`` on ``x``; return its tokens, values, codes and the aggregation's input,
    per head: tokens/values (G, n, d), codes (G, n), paths (G, n, paths * d)."""
    seen = {}
    hooks = [
        attn.value.register_forward_hook(
            lambda m, args, out: seen.update(tokens=args[0], values=out)),
        attn.aggregate.register_forward_pre_hook(lambda m, args: seen.update(paths=args[0])),
    ]
    try:
        out = attn(x)
    finally:
        for hook in hooks:
            hook.remove()
    batch, n, _ = seen['tokens'].shape
    heads, d = attn.num_heads, attn.head_dims

    def per_head(t):  # (B, n, heads * c) -> (B * heads, n, c)
        return t.reshape(batch, n, heads, -1).transpose(1, 2).reshape(batch * heads, n, -1)

    tokens, values = per_head(seen['tokens']), per_head(seen['values'])
    codes = attn.partition_codes(tokens.view(batch, heads, n, d)).view(batch * heads, n)
    return dict(out=out, tokens=tokens, values=values, codes=codes,
                paths=per_head(seen['paths']))


def make_attention(**attn_cfg) -> PartitionAttention:
    torch.manual_seed(0)
    return PartitionAttention(DIMS, HEADS, num_partitions=PARTS, sr_ratio=2,
                              attn_cfg=attn_cfg).eval()


@pytest.fixture(autouse=True, params=['reference', 'ext'])
def backend(request):
    with ops.use_backend(request.param):
        yield


@pytest.mark.parametrize('importance', IMPORTANCE)
def test_importance_sums_to_one_over_non_empty_partitions(importance):
    attn = make_attention(inter_importance=importance)
    desc = torch.randn(6, PARTS, DIMS // HEADS)
    counts = torch.randint(0, 5, (6, PARTS))
    counts[0] = torch.tensor([0, 7, 0, 0])  # a single non-empty partition: weight 1
    weights = attn.partition_importance(desc, counts)
    assert weights.shape == (6, PARTS)
    assert (weights[counts == 0] == 0).all()
    assert (weights[counts > 0] > 0).all()
    non_empty = (counts > 0).any(-1)
    torch.testing.assert_close(weights.sum(-1)[non_empty], torch.ones(int(non_empty.sum())))
    assert weights[0].tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize('importance', IMPORTANCE)
@pytest.mark.parametrize('intra', ['pool', 'token'])
def test_every_token_of_a_partition_receives_its_partition_features(intra, importance):
    attn = make_attention(intra=intra, inter_importance=importance)
    got = run_and_capture(attn, torch.randn(2, DIMS, 12, 10))
    tokens, values, codes, paths = got['tokens'], got['values'], got['codes'], got['paths']
    d = attn.head_dims
    assert paths.shape[-1] == 2 * d
    assert len(codes.unique()) > 1, 'the input should spread over several partitions'
    intra_part, inter_part = paths[..., :d], paths[..., d:]
    # Inter path: the importance-weighted mean of the partition (eqs. 8-9), the same vector
    # for every token of the partition.
    desc, counts = ops.partition_mean_pytorch(values, codes, PARTS)
    weight = attn.partition_importance(desc, counts)
    for g in range(codes.shape[0]):
        for k in codes[g].unique().tolist():
            members = codes[g] == k
            want = values[g][members].mean(0) * weight[g, k]
            torch.testing.assert_close(inter_part[g][members],
                                       want.expand(int(members.sum()), -1))
            w = torch.softmax(tokens[g][members], dim=0)  # per channel over the partition
            if intra == 'pool':
                # One proxy feature per partition (eqs. 6-7 pooled), given to all its tokens.
                pooled = (w * values[g][members]).sum(0)
                torch.testing.assert_close(intra_part[g][members],
                                           pooled.expand(int(members.sum()), -1))
            else:
                # Each token's own transformed feature times its softmax weight.
                torch.testing.assert_close(intra_part[g][members], w * values[g][members])


@pytest.mark.parametrize('intra', ['pool', 'token'])
def test_use_inter_false_removes_the_inter_path(intra):
    attn = make_attention(intra=intra, use_inter=False)
    assert not hasattr(attn, 'importance') and attn.aggregate.in_features == DIMS
    got = run_and_capture(attn, torch.randn(2, DIMS, 8, 8))
    if intra == 'pool':
        want = ops.partition_distribute_pytorch(ops.partition_softmax_pool_pytorch(
            got['tokens'], got['values'], got['codes'], PARTS), got['codes'])
    else:
        want = ops.partition_softmax_pytorch(got['tokens'], got['codes'], PARTS) * got['values']
    torch.testing.assert_close(got['paths'], want)


def inter_path_by_loops(attn: PartitionAttention, values: torch.Tensor,
                        codes: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9 token by token, from the module's weights only: (G, n, d) -> (G, n, d).

    Each token receives the mean of its partition's values times the partition's SE
    coefficient, the coefficients normalised over the non-empty partitions of its group; an
    empty partition's descriptor is zero and its coefficient is left out.
    """
    groups, _, d = values.shape
    desc = values.new_zeros(groups, PARTS, d)
    present = torch.zeros(groups, PARTS, dtype=torch.bool)
    for g in range(groups):
        for k in range(PARTS):
            members = codes[g] == k
            if members.any():
                desc[g, k] = values[g][members].mean(0)
                present[g, k] = True
    m = importance_logits(attn, desc) * present
    weight = m / m.sum(-1, keepdim=True)
    out = torch.empty_like(values)
    for g in range(groups):
        for i, k in enumerate(codes[g].tolist()):
            out[g, i] = desc[g, k] * weight[g, k]
    return out


@pytest.mark.parametrize('importance', IMPORTANCE)
def test_use_intra_false_leaves_only_the_inter_path(importance):
    attn = make_attention(use_intra=False, inter_importance=importance)
    assert attn.aggregate.in_features == DIMS
    got = run_and_capture(attn, torch.randn(2, DIMS, 8, 8))
    assert len(got['codes'].unique()) > 1, 'the input should spread over several partitions'
    # Each token's aggregation input is its partition's weighted mean alone (d channels, no
    # intra-partition feature beside it).
    assert got['paths'].shape[-1] == attn.head_dims
    torch.testing.assert_close(got['paths'],
                               inter_path_by_loops(attn, got['values'], got['codes']))


def test_channel_to_spatial_only_where_downsampled():
    for k in (1, 2, 4):
        attn = PartitionAttention(DIMS, HEADS, num_partitions=PARTS, sr_ratio=k)
        if k == 1:
            assert isinstance(attn.to_spatial, torch.nn.Identity)
            assert isinstance(attn.down, torch.nn.Identity)
        else:
            assert attn.to_spatial.out_channels == DIMS * k * k
        x = torch.randn(1, DIMS, 9, 11)
        assert attn.eval()(x).shape == x.shape


def test_k1_output_is_the_input_plus_the_aggregation():
    torch.manual_seed(0)
    attn = PartitionAttention(DIMS, HEADS, num_partitions=PARTS, sr_ratio=1).eval()
    x = torch.randn(2, DIMS, 6, 7)
    seen = {}
    attn.aggregate.register_forward_hook(lambda m, args, out: seen.update(y=out))
    out = attn(x)
    # (B, n, C) tokens of the aggregation -> (B, C, h, w): no further map at k = 1.
    y = seen['y'].transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(out, x + y)


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match=r"attn_cfg\['intra'\] must be one of \('pool', 'token'\)"):
        PartitionAttention(DIMS, HEADS, attn_cfg=dict(intra='mean'))
    with pytest.raises(ValueError, match=r"attn_cfg has no option 'intro'"):
        PartitionAttention(DIMS, HEADS, attn_cfg=dict(intro='pool'))


def importance_logits(attn: PartitionAttention, desc: torch.Tensor) -> torch.Tensor:
    """Eq. 9's coefficients before the normalisation, ``m_k = sigmoid(FC(GELU(FC(.))))``,
    computed here from the module's weights: (G, K, d) -> (G, K)."""
    fc1, fc2 = attn.importance[0], attn.importance[2]
    if attn.cfg.inter_importance == 'partition':
        inputs = desc  # each partition's own descriptor
    else:
        inputs = desc.flatten(1)  # the K descriptors of a head, side by side
    hidden = torch.nn.functional.gelu(inputs @ fc1.weight.T + fc1.bias)
    return torch.sigmoid(hidden @ fc2.weight.T + fc2.bias).reshape(desc.shape[:2])


@pytest.mark.parametrize('importance', IMPORTANCE)
def test_importance_is_the_normalised_se_coefficients(importance):
    attn = make_attention(inter_importance=importance)
    desc = torch.randn(6, PARTS, DIMS // HEADS)
    counts = torch.randint(0, 5, (6, PARTS))
    counts[:, 0] = 3  # every group has a non-empty partition
    m = importance_logits(attn, desc) * (counts > 0)
    torch.testing.assert_close(attn.partition_importance(desc, counts),
                               m / m.sum(-1, keepdim=True))


@pytest.mark.parametrize('importance', IMPORTANCE)
def test_joint_importance_sees_the_other_partitions(importance):
    # Change the tokens of partition 0 only. The per-partition coefficients of the others
    # stay (their ratios are unchanged; only the shared normalisation moves); the joint ones
    # change, because each coefficient is predicted from every descriptor.
    attn = make_attention(inter_importance=importance)
    values = torch.randn(4, 40, DIMS // HEADS)
    codes = torch.arange(40).remainder(PARTS).expand(4, 40).contiguous()
    changed = values.clone()
    changed[codes == 0] = torch.randn(int((codes == 0).sum()), DIMS // HEADS) * 3
    weights = []
    for v in (values, changed):
        desc, counts = ops.partition_mean(v, codes, PARTS)
        weights.append(attn.partition_importance(desc, counts))
    before, after = (w[:, 1:] / w[:, 1:2] for w in weights)  # ratios among partitions 1..K-1
    if importance == 'partition':
        torch.testing.assert_close(after, before)
    else:
        assert (after - before).abs().amax(-1).min() > 1e-3


def test_joint_importance_keeps_empty_partitions_at_zero():
    attn = make_attention(inter_importance='joint')
    values = torch.randn(2, 12, DIMS // HEADS)
    codes = torch.tensor([[0, 2] * 6, [3] * 12])
    desc, counts = ops.partition_mean(values, codes, PARTS)
    weights = attn.partition_importance(desc, counts)
    assert weights[0, 1] == 0 and weights[0, 3] == 0 and (weights[0, [0, 2]] > 0).all()
    assert weights[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
