"""The GPU path, for the first machine with CUDA: ``pytest -m gpu``.

Skipped without CUDA (every CI machine so far). What it holds: pretraining runs a few steps of
every modality on ``cuda``; a checkpoint trained on the GPU embeds the same on the CPU; mamba-ssm's
CUDA selective scan (when built) gives our scan's values and gradients; the Mamba encoder goes
through that kernel on the GPU. No preset enables mixed precision, so none is tested here.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

MODALITIES = ["gene", "expr", "mri", "signal", "hpo"]


@pytest.fixture(scope="module")
def gpu_checkpoint(sample_stores, tmp_path_factory):
    """Two epochs of the default pretraining (tiny preset, CLIP) of all five modalities on cuda."""
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.pretrain.run import run_pretrain

    out = tmp_path_factory.mktemp("gpu") / "pre"
    data = [str(sample_stores[m if m != "hpo" else "pheno"]) for m in MODALITIES]
    run_pretrain(PretrainSettings(modalities=MODALITIES, data=data, seed=0, epochs=2, device="cuda"), out,
                 log=lambda s: None)
    return out


def test_pretraining_every_modality_runs_on_cuda(gpu_checkpoint):
    state = json.loads((gpu_checkpoint / "state.json").read_text())
    assert state["finished"] and state["device"].startswith("cuda")
    for epoch in state["history"]:
        assert torch.isfinite(torch.tensor(epoch["loss"])), epoch


def test_a_gpu_checkpoint_embeds_the_same_on_the_cpu(gpu_checkpoint, sample_stores):
    from phenoclip.data.multimodal import MultimodalDataset, collate
    from phenoclip.pretrained import load_pretrained
    from phenoclip.ops.devices import to_device
    from phenoclip.data.multimodal import CohortStores

    pre = load_pretrained(gpu_checkpoint)  # on the CPU, as a laptop would open it
    stores = CohortStores([str(sample_stores[m if m != "hpo" else "pheno"]) for m in MODALITIES])
    on_gpu = copy.deepcopy(pre.model).cuda().eval()
    samples = stores.samples[:16]
    for m in MODALITIES:
        ds = MultimodalDataset(stores, [m], samples)
        batch = collate([ds[i] for i in range(len(ds))])
        with torch.no_grad():
            cpu = pre.model.encode(m, batch[m])
            gpu = on_gpu.encode(m, to_device(batch, "cuda")[m]).cpu()
        assert torch.allclose(cpu, gpu, rtol=1e-3, atol=1e-4), (m, float((cpu - gpu).abs().max()))


def _scan_args(device, seed=0, batch=2, dim=16, n=16, length=300):
    g = torch.Generator().manual_seed(seed)
    args = dict(u=torch.randn(batch, dim, length, generator=g), delta=torch.rand(batch, dim, length, generator=g),
                A=-torch.rand(dim, n, generator=g) - 0.5, B=torch.randn(batch, n, length, generator=g),
                C=torch.randn(batch, n, length, generator=g), D=torch.randn(dim, generator=g),
                z=torch.randn(batch, dim, length, generator=g), delta_bias=torch.randn(dim, generator=g) * 0.1)
    return {k: v.to(device).requires_grad_(True) for k, v in args.items()}


def test_mamba_ssm_kernel_matches_our_scan_in_values_and_gradients():
    from phenoclip.ops import scan as S

    kernel = S._cuda_kernel()
    if kernel is None:
        pytest.skip("mamba-ssm's CUDA kernel is not built on this machine (see the warning above)")
    ours_in, kernel_in = _scan_args("cpu"), _scan_args("cuda")
    ours = S.selective_scan(**ours_in, delta_softplus=True)  # on the CPU: always our scan
    theirs = kernel(*[kernel_in[k] for k in ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]], True, False)
    scale = float(ours.detach().abs().max())
    assert torch.allclose(theirs.detach().cpu(), ours.detach(), rtol=1e-4, atol=1e-5 * scale)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(ours.shape, generator=g)
    ours.backward(grad_out)
    theirs.backward(grad_out.cuda())
    for k in ours_in:
        a, b = ours_in[k].grad, kernel_in[k].grad.cpu()
        assert torch.allclose(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max())), k


def test_the_mamba_encoder_uses_the_kernel_on_cuda(monkeypatch):
    from phenoclip.models.mamba import MambaBlock
    from phenoclip.ops import scan as S

    kernel = S._cuda_kernel()
    if kernel is None:
        pytest.skip("mamba-ssm's CUDA kernel is not built on this machine")
    calls = []
    monkeypatch.setattr(S, "_cuda_kernel", lambda: (lambda *a, **k: calls.append(1) or kernel(*a, **k)))
    block = MambaBlock(32).cuda()
    y = block(torch.randn(2, 50, 32, device="cuda"))
    y.sum().backward()
    assert calls and torch.isfinite(y).all()


def test_row_draws_on_cuda_follow_the_patient_and_stay_on_the_device():
    from phenoclip.ops.draws import RowDraws

    a = RowDraws.for_batch(7, ["p1", "p2", "p3"])
    b = RowDraws.for_batch(7, ["p3", "p1"])
    x, y = a.rand((3, 500, 64), device="cuda"), b.rand((2, 500, 64), device="cuda")
    assert x.device.type == "cuda" and torch.equal(x[0], y[1]) and torch.equal(x[2], y[0])
    assert not torch.equal(x[0], x[1]) and 0.49 < float(x.mean()) < 0.51
    n = a.randint(0, 50, (3, 1000), device="cuda")
    assert n.dtype == torch.int64 and int(n.min()) == 0 and int(n.max()) == 49
    assert torch.equal(n[0], b.randint(0, 50, (2, 1000), device="cuda")[1])
    # the CPU streams are untouched by draws made on the GPU
    assert torch.equal(a.rand((3, 4))[1], RowDraws.for_batch(7, ["p2"]).rand((1, 4))[0])
    # "cuda" and "cuda:0" name one device, so one stream
    one, two = RowDraws.for_batch(9, ["p1"]), RowDraws.for_batch(9, ["p1"])
    mixed = torch.cat([one.rand((1, 4), device="cuda"), one.rand((1, 4), device=f"cuda:{torch.cuda.current_device()}")])
    assert torch.equal(mixed, torch.cat([two.rand((1, 4), device="cuda"), two.rand((1, 4), device="cuda")]))
