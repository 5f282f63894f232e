"""MambaBlock / MambaEncoder against mamba-ssm's Mamba and MixerModel run on the CPU.

mamba-ssm's modules call its CUDA ``selective_scan_fn``; the tests swap in its own
``selective_scan_ref`` and turn the fused path off, which is its reference ("slow") path.
Tolerances (float32): outputs and gradients of both are sums of the same products in different
orders, held to rtol 1e-4 and 1e-5 x the largest entry.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from phenoclip.models.mamba import MambaBlock, MambaEncoder


@pytest.fixture()
def mamba_ssm(monkeypatch):
    """mamba-ssm's Mamba module namespace, its scan swapped for the reference scan."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    simple = pytest.importorskip("mamba_ssm.modules.mamba_simple")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    monkeypatch.setattr(simple, "selective_scan_fn", selective_scan_ref)
    return simple


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


CONFIGS = [dict(d_model=16, d_state=8), dict(d_model=24, d_state=4, d_conv=3, expand=1, dt_rank=5),
           dict(d_model=16, d_state=16, bias=True, conv_bias=False, dt_init="constant")]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_same_parameters_and_initialisation(mamba_ssm, cfg):
    torch.manual_seed(3)
    theirs = mamba_ssm.Mamba(**cfg, use_fast_path=False)
    torch.manual_seed(3)
    ours = MambaBlock(**cfg)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), k  # same shapes, same init, same random stream
    assert ours.A_log._no_weight_decay and ours.D._no_weight_decay and ours.dt_proj.bias._no_reinit


def test_dt_bias_is_inverse_softplus_of_dt_range():
    block = MambaBlock(32, dt_min=0.01, dt_max=0.05)
    dt = torch.nn.functional.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1, 17.0).repeat(64, 1))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("L", [1, 7, 64])
def test_forward_and_gradients_match_mamba(mamba_ssm, cfg, L):
    theirs = mamba_ssm.Mamba(**cfg, use_fast_path=False)
    with torch.no_grad():  # move away from the init so every parameter matters
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = MambaBlock(**cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, L, cfg["d_model"])
    results = []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_()
        out = model(xi)
        loss = (out * torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)).sum()
        grads = torch.autograd.grad(loss, [xi, *model.parameters()])
        results.append([out, *grads])
    for a, b in zip(*results):
        close(a, b)


def test_state_dict_round_trip(mamba_ssm):
    ours = MambaBlock(16, d_state=8)
    theirs = mamba_ssm.Mamba(16, d_state=8, use_fast_path=False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    again = MambaBlock(16, d_state=8)
    again.load_state_dict(theirs.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("bad", [dict(d_model=0), dict(d_state=0), dict(expand=0.5), dict(d_conv=0),
                                 dict(dt_rank=0), dict(dt_rank="full"), dict(dt_rank=2.5), dict(dt_min=0.2),
                                 dict(dt_init="normal")])
def test_block_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        MambaBlock(**{"d_model": 16, **bad})


def test_encoder_equals_mixer_model(mamba_ssm):
    """Unidirectional LayerNorm encoder == mamba-ssm's MixerModel after its embedding."""
    from mamba_ssm.models.mixer_seq_simple import MixerModel

    torch.manual_seed(0)
    theirs = MixerModel(16, n_layer=2, d_intermediate=0, vocab_size=11, rms_norm=False,
                        ssm_cfg=dict(d_state=8, use_fast_path=False))
    ours = MambaEncoder(16, 2, d_state=8, norm="layer")
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("embedding.")}, strict=True)
    ids = torch.randint(0, 11, (2, 20))
    close(ours(theirs.embedding(ids)), theirs(ids))


def test_encoder_blocks_load_into_mamba_and_back(mamba_ssm):
    enc = MambaEncoder(16, 2, d_state=8, bidirectional=True)
    keys = set(enc.state_dict())
    assert {"layers.0.norm.weight", "layers.1.mixer.A_log", "layers.1.mixer_rev.out_proj.weight", "norm_f.weight"} <= keys
    for layer in enc.layers:
        for block in (layer.mixer, layer.mixer_rev):
            theirs = mamba_ssm.Mamba(16, d_state=8, use_fast_path=False)
            theirs.load_state_dict(block.state_dict(), strict=True)
            block.load_state_dict(theirs.state_dict(), strict=True)


def test_encoder_output_scale_follows_depth():
    """out_proj is rescaled by 1/sqrt(residual outputs), as mamba-ssm's MixerModel does."""
    torch.manual_seed(0)
    one, eight = MambaEncoder(64, 1), MambaEncoder(64, 8)
    ratio = one.layers[0].mixer.out_proj.weight.std() / eight.layers[0].mixer.out_proj.weight.std()
    assert 2.5 < ratio < 3.2  # sqrt(8) = 2.83


def test_padding_is_invisible():
    """With a mask, real tokens come out as if each sequence ran alone, padding before or after."""
    torch.manual_seed(0)
    enc = MambaEncoder(16, 2, d_state=4, bidirectional=True).eval()
    seqs = [torch.randn(5, 16), torch.randn(9, 16)]
    x = torch.randn(2, 12, 16) * 5  # padding holds junk
    mask = torch.zeros(2, 12, dtype=torch.bool)
    x[0, 4:9], mask[0, 4:9] = seqs[0], True  # padding on both sides
    x[1, :9], mask[1, :9] = seqs[1], True
    out = enc(x, mask)
    for b, s in enumerate(seqs):
        close(out[b][mask[b]], enc(s[None])[0])
    assert (out[~mask] == 0).all()
    close(enc.pool(out, mask), torch.stack([enc(s[None])[0].mean(0) for s in seqs]))


def test_bidirectional_is_symmetric_under_reversal():
    """With equal forward and reverse mixers, reversing the input reverses the output."""
    torch.manual_seed(0)
    enc = MambaEncoder(16, 2, d_state=4, bidirectional=True)
    for layer in enc.layers:
        layer.mixer_rev.load_state_dict(layer.mixer.state_dict())
    x = torch.randn(2, 10, 16)
    close(enc(x.flip(1)), enc(x).flip(1))
    uni = MambaEncoder(16, 2, d_state=4)
    assert not torch.allclose(uni(x.flip(1)), uni(x).flip(1), atol=1e-3)


def test_encoder_shapes_and_errors():
    enc = MambaEncoder(8, 1, d_state=2)
    x = torch.randn(3, 5, 8, requires_grad=True)
    out = enc(x)
    assert out.shape == (3, 5, 8) and enc.pool(out).shape == (3, 8)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    for bad in (dict(n_layers=0), dict(norm="batch"), dict(d_state=0)):
        with pytest.raises(ValueError):
            MambaEncoder(**{"d_model": 8, "n_layers": 1, **bad})
