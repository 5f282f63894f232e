"""Encoders: shapes, token masks that really hide content, argument validation, gradient flow, rebuild."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

from phenoclip.data.batch import DOSAGE, IMAGES, SIGNALS, TERMS, VALUES
from phenoclip.models.expression import ExpressionMamba, TabularMLP
from phenoclip.models.masks import random_patch_mask
from phenoclip.models.mri import VolumeViT, patchify, unpatchify
from phenoclip.models.phenotype import HpoEncoder
from phenoclip.models.signal import SignalCNNTransformer
from phenoclip.models.variant import DosageMLP, VariantMamba, VariantTransformer

HAVE_MAMBA = importlib.util.find_spec("phenoclip.models.mamba") is not None
needs_mamba = pytest.mark.skipif(not HAVE_MAMBA, reason="phenoclip.models.mamba (MambaEncoder) is not written yet")

B = 3


def _dosage(v: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(0, 3, (B, v), generator=g).float()
    d[0, :3] = -1.0  # missing calls
    return {DOSAGE: d}


def _values(n: int, seed: int = 0) -> dict:
    return {VALUES: torch.randn(B, n, generator=torch.Generator().manual_seed(seed))}


def _volume(shape=(8, 8, 12), c: int = 1, seed: int = 0) -> dict:
    return {IMAGES: torch.randn(B, c, *shape, generator=torch.Generator().manual_seed(seed))}


def _signal(c: int = 2, t: int = 64, seed: int = 0) -> dict:
    return {SIGNALS: torch.randn(B, c, t, generator=torch.Generator().manual_seed(seed))}


def _terms() -> dict:
    return {TERMS: torch.tensor([[0, 3, 5, -1], [2, -1, -1, -1], [1, 4, 6, 7]])}


# name -> (encoder factory, inputs factory); small enough for milliseconds on a CPU
CASES = {
    "variant-transformer-cls": (lambda: VariantTransformer(50, width=16, depth=1, heads=2, patch=1),
                                lambda: _dosage(50)),
    "variant-transformer-patch-linear": (lambda: VariantTransformer(50, width=16, depth=2, heads=4, patch=8,
                                                                    pool="mean"), lambda: _dosage(50)),
    "variant-transformer-patch-sum": (lambda: VariantTransformer(50, width=16, depth=1, heads=2, patch=4,
                                                                 patch_mixing="sum"), lambda: _dosage(50)),
    "variant-mamba": pytest.param((lambda: VariantMamba(40, width=16, depth=1, patch=4, d_state=4),
                                   lambda: _dosage(40)),
                                  marks=needs_mamba),
    "dosage-mlp": (lambda: DosageMLP(50, width=16, hidden=(32,)), lambda: _dosage(50)),
    "expression-mamba": pytest.param((lambda: ExpressionMamba(30, width=16, depth=1, patch=4, d_state=4, pool="mixed"),
                                      lambda: _values(30)), marks=needs_mamba),
    "expression-mamba-unidirectional": pytest.param(
        (lambda: ExpressionMamba(30, width=16, depth=1, d_state=4, bidirectional=False), lambda: _values(30)),
        marks=needs_mamba),
    "tabular-mlp": (lambda: TabularMLP(30, width=16, hidden=(32, 32), norm="layer"), lambda: _values(30)),
    "volume-vit-mean": (lambda: VolumeViT((8, 8, 12), patch=4, width=16, depth=1, heads=2), lambda: _volume()),
    "volume-vit-cls-2ch": (lambda: VolumeViT((8, 8, 12), in_channels=2, patch=(4, 4, 6), width=12, depth=2, heads=3,
                                             pool="cls", pos_embed="sincos"), lambda: _volume(c=2)),
    "signal-bn": (lambda: SignalCNNTransformer(2, 64, width=16, depth=1, heads=2, stem_channels=(8, 16),
                                               stem_strides=(2, 4)), lambda: _signal()),
    "signal-gn-cls": (lambda: SignalCNNTransformer(1, 50, width=16, depth=1, heads=4, stem_channels=(8,),
                                                   stem_strides=(4,), norm="group", pool="cls", kernel_size=5),
                      lambda: _signal(c=1, t=50)),
    "hpo": (lambda: HpoEncoder(10, 8, width=16, hidden=32), _terms),
}


ALL = [pytest.param(*(CASES[n].values if hasattr(CASES[n], "values") else (CASES[n],)),
                    marks=getattr(CASES[n], "marks", ()), id=n) for n in CASES]
MASKABLE = [p for p in ALL if p.id not in ("dosage-mlp", "tabular-mlp")]


def _n_tokens(enc, inputs) -> int:
    return enc.n_tokens if enc.n_tokens is not None else inputs[TERMS].shape[1]


@pytest.mark.parametrize("case", ALL)
def test_forward_and_tokens_shapes(case):
    torch.manual_seed(0)
    enc, inputs = case[0](), case[1]()
    enc.eval()
    pooled = enc(inputs)
    tokens = enc.forward_tokens(inputs)
    n = _n_tokens(enc, inputs)
    assert pooled.shape == (B, enc.width) and torch.isfinite(pooled).all()
    assert tokens.shape == (B, n, enc.width) and torch.isfinite(tokens).all()
    p2, t2 = enc.forward_features(inputs)
    torch.testing.assert_close(p2, pooled)
    torch.testing.assert_close(t2, tokens)


@pytest.mark.parametrize("case", MASKABLE)
def test_token_mask_hides_content(case):
    """Masked tokens change the output, an all-False mask changes nothing, and the content behind a
    mask cannot reach the output (rewriting it leaves every output equal)."""
    torch.manual_seed(0)
    enc, inputs = case[0](), case[1]()
    enc.eval()
    assert enc.supports_token_mask
    n = _n_tokens(enc, inputs)
    none = torch.zeros(B, n, dtype=torch.bool)
    mask = random_patch_mask(B, n, 0.5, torch.Generator().manual_seed(1))
    base = enc.forward_tokens(inputs)
    torch.testing.assert_close(enc.forward_tokens(inputs, none), base)
    masked = enc.forward_tokens(inputs, mask)
    assert not torch.allclose(masked, base)
    # rewrite the hidden content
    other = {k: v.clone() for k, v in inputs.items()}
    if isinstance(enc, (VariantTransformer, VariantMamba)):
        hide = enc.tokens.patch
        vm = mask.repeat_interleave(hide, 1)[:, : enc.tokens.n_variants]
        other[DOSAGE][vm] = 2.0 - other[DOSAGE][vm].clamp(min=0)
    elif isinstance(enc, ExpressionMamba):
        vm = mask.repeat_interleave(enc.tokens.patch, 1)[:, : enc.tokens.n_genes]
        other[VALUES][vm] += 5.0
    elif isinstance(enc, VolumeViT):
        p = patchify(other[IMAGES], enc.patch)
        p[mask] += 5.0
        other[IMAGES] = unpatchify(p, enc.patch, enc.volume_shape, enc.in_channels)
    elif isinstance(enc, SignalCNNTransformer):
        other[SIGNALS] = other[SIGNALS] + 5.0 * enc.time_mask(mask)[:, None, :]
    elif isinstance(enc, HpoEncoder):
        other[TERMS] = torch.where(mask & (other[TERMS] >= 0), (other[TERMS] + 1) % 8, other[TERMS])
    assert not torch.equal(other[next(iter(other))], inputs[next(iter(inputs))])
    torch.testing.assert_close(enc.forward_tokens(other, mask), masked)
    with pytest.raises(ValueError, match="token_mask"):
        enc.forward_tokens(inputs, torch.zeros(B, n + 1, dtype=torch.bool))


@pytest.mark.parametrize("case", ALL)
def test_every_parameter_gets_a_gradient(case):
    torch.manual_seed(0)
    enc, inputs = case[0](), case[1]()
    enc.train()
    if enc.supports_token_mask:
        n = _n_tokens(enc, inputs)
        mask = random_patch_mask(B, n, 0.4, torch.Generator().manual_seed(2))
        pooled, tokens = enc.forward_features(inputs, mask)
        loss = pooled.square().mean() + tokens.square().mean()
        if isinstance(enc, HpoEncoder):
            loss = loss + enc.term_embeddings().square().mean()
    else:
        loss = enc(inputs).square().mean()
    loss.backward()
    dead = [n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("case", ALL)
def test_rebuild_from_json_config(case):
    torch.manual_seed(0)
    enc, inputs = case[0](), case[1]()
    again = type(enc)(**json.loads(json.dumps(enc.config)))
    a, b = enc.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    enc.eval(), again.eval()
    torch.testing.assert_close(again(inputs), enc(inputs))


def test_mlp_refuses_token_masks():
    enc = DosageMLP(10, width=8, hidden=(8,))
    assert enc.n_tokens == 1 and not enc.supports_token_mask
    with pytest.raises(ValueError, match="corrupt the input"):
        enc.forward_tokens(_dosage(10), torch.zeros(B, 1, dtype=torch.bool))


def test_the_dosage_mlps_l1_step_soft_thresholds_the_first_layer_only():
    torch.manual_seed(0)
    enc = DosageMLP(20, width=8, hidden=(16,), l1=0.5)
    first, later = enc.net[0].weight.detach().clone(), enc.net[-1].weight.detach().clone()
    enc.proximal_step(lr=0.2)                      # threshold 0.1
    w = enc.net[0].weight
    small = first.abs() <= 0.1
    assert small.any() and (~small).any()
    assert torch.all(w[small] == 0)
    assert torch.allclose(w[~small], first[~small] - 0.1 * torch.sign(first[~small]))
    assert torch.equal(enc.net[-1].weight, later)
    assert enc.config["l1"] == 0.5
    off = DosageMLP(20, width=8, hidden=(16,))
    before = off.net[0].weight.detach().clone()
    off.proximal_step(lr=0.2)
    assert torch.equal(off.net[0].weight, before)


BAD = {
    "mlp negative l1": lambda: DosageMLP(10, l1=-0.1),
    "heads do not divide width": lambda: VariantTransformer(10, width=18, heads=4),
    "non-positive variants": lambda: VariantTransformer(0),
    "odd width for positions": lambda: VariantTransformer(10, width=15, heads=3),
    "unknown pool": lambda: VariantTransformer(10, width=16, heads=2, pool="max"),
    "unknown mixing": lambda: VariantTransformer(10, width=16, heads=2, patch=2, patch_mixing="concat"),
    "negative patch": lambda: VariantTransformer(10, width=16, heads=2, patch=-1),
    "dropout 1": lambda: VariantTransformer(10, width=16, heads=2, dropout=1.0),
    "mlp zero hidden": lambda: DosageMLP(10, hidden=(0,)),
    "mlp bad norm": lambda: TabularMLP(10, norm="instance"),
    "tabular zero features": lambda: TabularMLP(0),
    "patch does not divide volume": lambda: VolumeViT((8, 8, 10), patch=4, width=16, heads=2),
    "two-axis volume": lambda: VolumeViT((8, 8), patch=4, width=16, heads=2),
    "vit heads": lambda: VolumeViT((8, 8, 8), patch=4, width=16, heads=3),
    "sincos width": lambda: VolumeViT((8, 8, 8), patch=4, width=16, heads=2, pos_embed="sincos"),
    "signal too short": lambda: SignalCNNTransformer(1, 0, width=16, heads=2),
    "stem lengths differ": lambda: SignalCNNTransformer(1, 64, width=16, heads=2, stem_channels=(8,),
                                                        stem_strides=(2, 2)),
    "signal bad norm": lambda: SignalCNNTransformer(1, 64, width=16, heads=2, norm="layer"),
    "hpo vocab too large": lambda: HpoEncoder(5, 6),
    "hpo zero width": lambda: HpoEncoder(5, 5, width=0),
}


@pytest.mark.parametrize("make", list(BAD.values()), ids=list(BAD))
def test_impossible_settings_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


@needs_mamba
def test_mamba_encoders_validate():
    with pytest.raises(ValueError):
        ExpressionMamba(10, width=16, pool="cls")
    with pytest.raises(ValueError):
        VariantMamba(10, width=0)


def test_wrong_input_shapes_raise():
    with pytest.raises(ValueError, match="dosage"):
        VariantTransformer(10, width=16, heads=2)(_dosage(11))
    with pytest.raises(ValueError, match="images"):
        VolumeViT((8, 8, 12), patch=4, width=16, heads=2)(_volume((8, 8, 8)))
    with pytest.raises(ValueError, match="signals"):
        SignalCNNTransformer(2, 64, width=16, heads=2)(_signal(t=65))


def test_patchify_round_trip_and_order_match_the_vit():
    vol = torch.randn(2, 2, 8, 12, 4)
    p = patchify(vol, (4, 6, 2))
    assert p.shape == (2, 2 * 2 * 2, 4 * 6 * 2 * 2)
    assert torch.equal(unpatchify(p, (4, 6, 2), (8, 12, 4), in_channels=2), vol)
    # patch 1 = grid position (0, 1, 1): d 0:4, h 6:12, w 2:4; voxels ordered (pd, ph, pw, c)
    torch.testing.assert_close(p[:, 3], vol[:, :, 0:4, 6:12, 2:4].permute(0, 2, 3, 4, 1).reshape(2, -1))
    # the ViT's patch tokens are a linear map of exactly these patches, in this order
    vit = VolumeViT((8, 12, 4), in_channels=2, patch=(4, 6, 2), width=8, depth=1, heads=2)
    conv = vit.embed.patch_embeddings
    w = conv.weight.permute(0, 2, 3, 4, 1).reshape(8, -1)         # (W, pd ph pw c)
    tokens = conv(vol).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, p @ w.T + conv.bias, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        patchify(vol, 3)


def test_variant_tokens_use_positions_and_keep_slots_apart():
    torch.manual_seed(0)
    enc = VariantTransformer(8, width=16, depth=1, heads=2, patch=4, patch_mixing="sum").eval()
    x = {DOSAGE: torch.tensor([[0.0, 2.0, 1.0, 1.0, 0.0, 0.0, 2.0, 1.0]])}
    swapped = {DOSAGE: torch.tensor([[2.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 1.0]])}
    out = enc(x)
    assert not torch.allclose(enc(swapped), out)   # which variant carries which dosage survives the sum
    enc.set_positions([10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000])
    assert not torch.allclose(enc(x), out)
    assert enc.state_dict()["tokens.positions"][1].item() == 20_000
    with pytest.raises(ValueError, match="positions"):
        enc.set_positions([1, 2, 3])
    assert enc.variant_to_token_mask(torch.tensor([[False] * 5 + [True] + [False] * 2])).tolist() == [[False, True]]


def test_dosage_mlp_imputes_missing_with_the_column_mean():
    torch.manual_seed(0)
    enc = DosageMLP(4, width=8, hidden=(8,), norm="none").eval()
    means = DosageMLP.column_means([[0, 2, -1, 1], [2, 2, -1, 0], [-1, 2, -1, 0]])
    torch.testing.assert_close(torch.as_tensor(means), torch.tensor([1.0, 2.0, 1.0, 1 / 3]))
    enc.set_column_means(means)
    missing = enc({DOSAGE: torch.tensor([[-1.0, -1.0, -1.0, -1.0]])})
    at_mean = enc({DOSAGE: torch.tensor([[1.0, 2.0, 1.0, 1 / 3]])})
    torch.testing.assert_close(missing, at_mean)


def test_signal_token_count_and_time_mask():
    enc = SignalCNNTransformer(2, 1000, width=16, heads=2, stem_strides=(4, 4))
    assert enc.n_tokens == 63 and enc.stride == 16      # ceil(ceil(1000 / 4) / 4)
    tm = torch.zeros(1, 63, dtype=torch.bool)
    tm[0, 62] = True
    t = enc.time_mask(tm)
    assert t.shape == (1, 1000) and t[0, 992:].all() and not t[0, :992].any()


def test_variant_tokens_fast_path_equals_reference():
    """The decomposed token embedding equals embedding every variant then mixing (values and grads)."""
    from phenoclip.models.variant import VariantTokens

    torch.manual_seed(0)
    for mixing in ("linear", "sum"):
        for patch, n_var in ((16, 2001), (4, 30), (1, 9)):
            tok = VariantTokens(n_var, 16, patch=patch, patch_mixing=mixing).double()
            dosage = torch.randint(-1, 3, (3, n_var)).double()
            mask = torch.rand(3, tok.n_tokens) < 0.3
            fast, ref = tok(dosage, mask), tok.forward_reference(dosage, mask)
            torch.testing.assert_close(fast, ref)
            g_fast = torch.autograd.grad(fast.square().sum(), list(tok.parameters()))
            g_ref = torch.autograd.grad(ref.square().sum(), list(tok.parameters()))
            for a, b in zip(g_fast, g_ref):
                torch.testing.assert_close(a, b)


def test_attention_key_bias_gets_no_gradient_and_frozen_layers_are_skipped():
    """The key third of in_proj_bias has a true gradient of zero (softmax cancels it): its rounding
    noise is zeroed. A frozen copy (BYOL's target of a transformer encoder) made the hook raise."""
    from phenoclip.models.heads import freeze_attention_key_bias

    torch.manual_seed(0)
    layer = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    target = copy.deepcopy(layer)
    for p in target.parameters():
        p.requires_grad_(False)
    assert freeze_attention_key_bias(torch.nn.ModuleList([layer, target])) == 1
    x = torch.randn(3, 5, 8)
    layer(x, x, x)[0].square().sum().backward()
    grad = layer.in_proj_bias.grad
    assert torch.all(grad[8:16] == 0) and grad[:8].abs().sum() > 0 and grad[16:].abs().sum() > 0
