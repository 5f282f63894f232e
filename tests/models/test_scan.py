"""phenoclip.ops.scan against mamba-ssm's selective_scan_ref and our sequential twin, value and gradient.

Tolerances: float64 runs compare to a float64 transcript of mamba-ssm's reference (its source with
``.float()`` read as ``.double()``; the original always computes in float32) with rtol 1e-8 and
atol 1e-10 x the tensor's largest entry: ~1e5 ulp, room for the different summation order of a
chunked scan over 300 steps. float32 runs compare to the original reference with rtol 1e-4 and
atol 1e-5 x the largest entry (~100 ulp of the largest term): in both orders every sum of up to L
products rounds differently, and entries that nearly cancel can only be held to the scale of
their tensor. Measured: max |ours - ref| / max |ref| <= 2e-6 (float32), <= 1e-12 (float64).
"""

from __future__ import annotations

import inspect
import itertools
import subprocess
import sys
import types

import pytest
import torch

from phenoclip.ops import scan as S
from phenoclip.ops.scan import selective_scan, selective_scan_sequential

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


@pytest.fixture(scope="module")
def refs():
    """{dtype: mamba-ssm's selective_scan_ref in that precision} (imported with the CUDA stub)."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    ssi = pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    namespace = dict(vars(ssi))
    exec(inspect.getsource(ssi.selective_scan_ref).replace(".float()", ".double()"), namespace)
    return {torch.float32: ssi.selective_scan_ref, torch.float64: namespace["selective_scan_ref"]}


def make(L, b_kind="var", c_kind="var", dtype=torch.float64, batch=2, dim=8, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    def bc(kind):
        return rand(*{"var": (batch, n, L), "fix": (dim, n), "grp": (batch, 2, n, L)}[kind])

    A = (-3 * torch.rand(dim, n, generator=g, dtype=dtype)).requires_grad_()
    return dict(u=rand(batch, dim, L), delta=rand(batch, dim, L, scale=0.5), A=A, B=bc(b_kind), C=bc(c_kind),
                D=rand(dim), z=rand(batch, dim, L), delta_bias=rand(dim, scale=0.3))


def run(fn, inputs, softplus=True, last=True, drop=()):
    """Outputs and the gradients of a weighted loss w.r.t. every tensor input."""
    args = {k: (None if k in drop else v) for k, v in inputs.items()}
    res = fn(**args, delta_softplus=softplus, return_last_state=last)
    out, state = res if last else (res, None)
    weights = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out)  # non-uniform dLoss/dout
    loss = (out * weights).sum() + (state.square().sum() if last else 0)
    live = [v for v in args.values() if v is not None]
    grads = torch.autograd.grad(loss, live)
    return [out] + ([state] if last else []) + list(grads)


def assert_close(ours, ref, dtype):
    rtol, atol = (1e-8, 1e-10) if dtype == torch.float64 else (1e-4, 1e-5)
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * max(b.abs().max().item(), 1e-30), msg=f"item {i}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("L", [1, 7, 64, 300])
@pytest.mark.parametrize("kinds", [("var", "var"), ("fix", "fix"), ("grp", "grp"), ("var", "fix"), ("grp", "var")])
def test_matches_reference_all_arguments(refs, kinds, L, dtype):
    inputs = make(L, *kinds, dtype=dtype)
    assert_close(run(selective_scan, inputs), run(refs[dtype], inputs), dtype)


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("drop", [c for r in range(4) for c in itertools.combinations(["D", "z", "delta_bias"], r)])
@pytest.mark.parametrize("last", [False, True])
def test_matches_reference_optional_arguments(refs, drop, softplus, last):
    inputs = make(64, "var", "var", torch.float64)
    if not softplus:  # keep dt positive without softplus, as the kernel's callers do
        inputs["delta"] = inputs["delta"].detach().abs().requires_grad_()
    assert_close(run(selective_scan, inputs, softplus, last, drop), run(refs[torch.float64], inputs, softplus, last, drop),
                 torch.float64)


@pytest.mark.parametrize("chunk,block", [(3, 1), (5, 10), (8, 1 << 30)])
@pytest.mark.parametrize("L", [1, 7, 64])
@pytest.mark.parametrize("kinds", [("var", "var"), ("fix", "grp")])
def test_chunk_and_block_tiling(monkeypatch, chunk, block, L, kinds):
    """Many blocks, partial chunks and a single block all equal the sequential twin."""
    monkeypatch.setattr(S, "CHUNK", chunk)
    # BLOCK_BYTES is per (W, B, D, N) tensor: B * D * N * 8 bytes per step in float64
    monkeypatch.setattr(S, "BLOCK_BYTES", block * 2 * 8 * 16 * 8)
    inputs = make(L, *kinds)
    assert_close(run(selective_scan, inputs), run(selective_scan_sequential, inputs), torch.float64)


def test_sequential_twin_matches_reference(refs):
    for dtype in (torch.float64, torch.float32):
        inputs = make(40, "grp", "var", dtype)
        assert_close(run(selective_scan_sequential, inputs), run(refs[dtype], inputs), dtype)


def test_gradcheck(monkeypatch):
    """Finite differences, independent of any reference (two chunks and a partial one)."""
    monkeypatch.setattr(S, "CHUNK", 4)
    inputs = make(9, "var", "fix", batch=1, dim=2, n=3)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, delta_softplus=True, return_last_state=True), tuple(inputs.values()))


def test_strong_decay_stays_finite_and_exact():
    """dt * A far below the float32 underflow edge: no NaN/inf, same as the step-by-step twin."""
    inputs = make(50, dtype=torch.float32)
    with torch.no_grad():
        inputs["delta"].mul_(0).add_(60.0)  # exp(-3 * 60) underflows float32
    ours, twin = run(selective_scan, inputs), run(selective_scan_sequential, inputs)
    assert all(torch.isfinite(t).all() for t in ours)
    assert_close(ours, twin, torch.float32)


def test_half_precision_dtypes():
    inputs = make(20, dtype=torch.float32)
    low = {k: v.detach().to(torch.bfloat16) if k in ("u", "delta", "z") else v.detach() for k, v in inputs.items()}
    out, last = selective_scan(**low, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    ref = selective_scan(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def saved_bytes(L):
    inputs = make(L, dtype=torch.float32, dim=32, n=16)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan(**inputs, delta_softplus=True)
    out.sum().backward()
    return total, inputs["u"].numel() * 4


def test_saved_memory_is_linear_in_length():
    """Autograd keeps O(L * B * D) numbers (inputs and gates), never the O(L * B * D * N) states."""
    small, u_small = saved_bytes(1024)
    large, u_large = saved_bytes(4096)
    assert large / small < 5
    assert large < 10 * u_large  # about 8 u here; the states of every step alone would be N = 16 u


@pytest.mark.parametrize("bad", [
    dict(u=torch.zeros(2, 8, 5)), dict(A=torch.zeros(7, 16)), dict(B=torch.zeros(2, 16, 4)),
    dict(C=torch.zeros(2, 3, 16, 6)), dict(D=torch.zeros(9)), dict(z=torch.zeros(2, 8, 5)),
    dict(delta_bias=torch.zeros(2)), dict(A=torch.zeros(8, 16, dtype=torch.complex64)),
    dict(u=torch.zeros(2, 8, 0), delta=torch.zeros(2, 8, 0), B=torch.zeros(8, 16), C=torch.zeros(8, 16)),
])
def test_bad_arguments_raise_value_error(bad):
    args = {k: v.detach() for k, v in make(6, dtype=torch.float32).items()}
    with pytest.raises(ValueError):
        selective_scan(**{**args, **bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only dispatch")
def test_cpu_install_uses_pytorch_scan_and_says_so_once(capsys):
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    S._cuda_kernel.cache_clear()
    assert S._cuda_kernel() is None  # the stub has no compiled fwd
    assert S._cuda_kernel() is None
    lines = [line for line in capsys.readouterr().err.splitlines() if "CUDA kernel" in line]
    assert len(lines) == 1 and "MAMBA_SKIP_CUDA_BUILD" in lines[0] and "PyTorch scan" in lines[0], lines


def test_importing_phenoclip_does_not_import_mamba_ssm():
    """mamba-ssm pulls triton and transformers (~10 s): only a CUDA call may import it."""
    code = ("import sys, phenoclip.ops.scan, phenoclip.models.mamba, phenoclip_bench.scan; "
            "sys.exit('mamba_ssm' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_benchmark_case_and_ratios():
    from phenoclip_bench.scan import _measure, _ratios

    seconds, peak_mb, note = _measure("ours", 64, 1, 4, timeout=120)
    assert note == "" and seconds > 0 and peak_mb >= 0
    rows = [["ours", 64, 0.5, 10.0, ""], ["mamba_ssm selective_scan_ref", 64, 5.0, 30.0, ""],
            ["TransformerEncoderLayer", 64, None, None, "skipped"]]
    assert _ratios(rows) == {"ref_over_ours_seconds_L64": 10.0, "ref_over_ours_peak_mb_L64": 3.0}


def test_the_ssd_reference_runs_and_gets_its_own_ratio():
    """Mamba-2's chunked scan (mamba-ssm's pure-PyTorch ssd_minimal) as a speed reference: a case
    that really runs forward + backward, and ratios kept apart from the Mamba-1 reference's."""
    from phenoclip_bench.scan import SSD_CHUNK, _measure, _ratios

    seconds, peak_mb, note = _measure("ssd", 2 * SSD_CHUNK, 1, 64, timeout=300)
    assert note == "" and seconds > 0 and peak_mb >= 0
    rows = [["ours", 64, 0.5, 10.0, ""], ["mamba_ssm ssd_minimal (Mamba-2, chunked)", 64, 0.25, 20.0, ""],
            ["mamba_ssm selective_scan_ref", 64, 5.0, 30.0, ""]]
    assert _ratios(rows) == {"ssd_over_ours_seconds_L64": 0.5, "ssd_over_ours_peak_mb_L64": 2.0,
                             "ref_over_ours_seconds_L64": 10.0, "ref_over_ours_peak_mb_L64": 3.0}
