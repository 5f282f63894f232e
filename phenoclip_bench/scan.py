"""Selective scan cost: our chunked scan against mamba-ssm's reference scan and full attention.

Each case runs forward + backward in its own Python process (:func:`_child`), so its memory
figure is its own: ``peak_MB`` is the process' peak resident set (VmHWM) after the pass minus its
resident set just before it (inputs built, imports and a small warm-up done), i.e. the extra
memory the pass needed. Shapes are those of one Mamba layer at ``d_model``: u, delta, z
(batch, 2*d_model, L); A (2*d_model, 16); B, C (batch, 16, L); D, delta_bias; softplus on.
The transformer case is ``nn.TransformerEncoderLayer(d_model, nhead=4, 4*d_model, dropout=0,
batch_first=True)`` in training mode on (batch, L, d_model): without dropout PyTorch takes its
fused scaled-dot-product attention on the CPU, which never holds the L x L matrix (its default
dropout of 0.1 forces the path that does: 14 s and 2.1 GB at L = 4,096 against 0.93 s and 49 MB),
so the comparison is against attention's fastest CPU path. Its time still grows as L^2; a case
that would exceed the timeout is stopped and reported so. The SSD case is Mamba-2's chunked scan
in pure PyTorch, mamba-ssm's own ``ssd_minimal_discrete`` (the paper's Listing 1), on the same
d_inner split into heads of :data:`SSD_HEADDIM` with state size 16 and chunks of
:data:`SSD_CHUNK` (the fastest of 64 / 128 / 256 here at L = 4,096): a different model (a scalar
decay per head instead of a diagonal one per channel), the strongest pure-PyTorch
linear-time scan there is to set ours against. Seconds are the best of 3 passes
(ours), 2 (transformer; 1 above L = 16k) or 1 (mamba-ssm's reference, minutes at L = 4096).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from phenoclip_bench import SuiteResult, Table
from phenoclip.ops.scan import selective_scan

D_STATE = 16
SSD_HEADDIM = 64  # Mamba-2's default head width
SSD_CHUNK = 64
REF_MAX_L = 4096  # mamba-ssm's reference backward is quadratic: minutes at 4k, hours at 64k


def _stub_cuda_extension() -> None:
    """Let ``import mamba_ssm`` succeed without its compiled CUDA extension: the benchmark only
    calls mamba-ssm's pure-PyTorch code."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))


def _child(method: str, L: int, batch: int, d_model: int, repeats: int = 1, threads: int = 0) -> None:
    """Build the inputs, warm up, run forward + backward ``repeats`` times; print a JSON line.

    The fastest repeat is reported: on a shared machine the minimum is the repeatable figure.
    """

    def status(key: str) -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(key))

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if method == "transformer":
        layer = torch.nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0,
                                                 batch_first=True)

        def make(n):
            return (torch.randn(batch, n, d_model, requires_grad=True),)

        def run(x):
            layer(x).sum().backward()
    elif method == "ssd":
        _stub_cuda_extension()
        # optional (the mamba extra), and only after the stub above: importing mamba_ssm takes ~10 s
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

        heads = 2 * d_model // SSD_HEADDIM

        def make(n):
            n = -(-n // SSD_CHUNK) * SSD_CHUNK  # whole chunks
            dt = torch.exp(torch.rand(batch, n, heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            return (torch.randn(batch, n, heads, SSD_HEADDIM) * dt[..., None], -dt,
                    torch.randn(batch, n, heads, D_STATE), torch.randn(batch, n, heads, D_STATE))

        def run(*args):
            for t in args:
                t.requires_grad_()
            ssd_minimal_discrete(*args, block_len=SSD_CHUNK)[0].sum().backward()
    else:
        if method == "ours":
            fn = selective_scan
        else:
            _stub_cuda_extension()
            # optional (the mamba extra), and only after the stub above: importing mamba_ssm takes ~10 s
            from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as fn
        d = 2 * d_model
        A = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(d, 1)  # Mamba's S4D-real init
        dt = torch.exp(torch.rand(d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        bias = dt + torch.log(-torch.expm1(-dt))  # Mamba's dt bias init: softplus(bias) in [1e-3, 0.1]

        def make(n):
            return (torch.randn(batch, d, n), 0.5 * torch.randn(batch, d, n), A.clone(),
                    torch.randn(batch, D_STATE, n), torch.randn(batch, D_STATE, n), torch.ones(d),
                    torch.randn(batch, d, n), bias.clone())

        def run(*args):
            for t in args:
                t.requires_grad_()
            fn(*args, delta_softplus=True).sum().backward()
    run(*make(64))  # first calls pay for thread pools and lazy initialisation
    args = make(L)
    before = status("VmRSS:")
    seconds = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(*args)
        seconds = min(seconds, time.perf_counter() - t0)
        for t in args:
            t.grad = None
    print(json.dumps({"seconds": seconds, "peak_mb": status("VmHWM:") - before}))


def _measure(method: str, L: int, batch: int, d_model: int, timeout: float, repeats: int = 1,
             threads: int = 0) -> tuple[float | None, float | None, str]:
    code = f"from phenoclip_bench.scan import _child; _child({method!r}, {L}, {batch}, {d_model}, {repeats}, {threads})"
    root = str(Path(__file__).resolve().parents[1])  # the child imports this phenoclip, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, None, f"stopped after {timeout:.0f} s"
    if proc.returncode != 0:
        return None, None, f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return round(out["seconds"], 3), round(out["peak_mb"], 1), ""


def scan_benchmark(lengths=(1024, 4096, 16384, 65536), batch: int = 2, d_model: int = 64, quick: bool = False,
                   timeout: float = 600.0, threads: int = 0) -> tuple[list[list], dict]:
    """Forward + backward seconds and extra peak memory per method and length.

    Returns ``rows`` of ``[method, L, seconds, peak_MB, note]`` (seconds and peak None when a
    case is skipped or fails, the note says why) and ``ratios``: ``ref_over_ours_*`` at the
    longest length both ran (4096), ``transformer_over_ours_*_L{L}`` and ``ssd_over_ours_*_L{L}`` per
    length both ran.
    Quick mode measures L = 1024 and 2048 only. ``threads`` > 0 sets torch's thread count in
    every case (1 gives steadier figures on a machine shared with other jobs); 0 keeps torch's.
    """
    ref_max = REF_MAX_L
    if quick:  # the reference's backward takes minutes at 4k and ~1 min at 2k: --quick runs it at 1k only
        lengths, ref_max = (1024, 2048), 1024
    rows = []
    for L in lengths:
        rows.append(["ours", L, *_measure("ours", L, batch, d_model, timeout, 3, threads)])
        if L <= ref_max:
            rows.append(["mamba_ssm selective_scan_ref", L, *_measure("ref", L, batch, d_model, timeout, 1, threads)])
        else:
            rows.append(["mamba_ssm selective_scan_ref", L, None, None,
                         "skipped: quadratic backward (16x the time per 4x length)"
                         + (" (--quick: 1k only)" if quick and L <= REF_MAX_L else ", far over 120 s")])
        rows.append(["mamba_ssm ssd_minimal (Mamba-2, chunked)", L,
                     *_measure("ssd", L, batch, d_model, timeout, 2 if L <= 16384 else 1, threads)])
        rows.append(["TransformerEncoderLayer", L, *_measure("transformer", L, batch, d_model, timeout,
                                                             2 if L <= 16384 else 1, threads)])
    return rows, _ratios(rows)


def _ratios(rows: list[list]) -> dict:
    by = {(r[0], r[1]): r for r in rows if r[2] is not None}
    ratios = {}
    for (method, L), r in by.items():
        ours = by.get(("ours", L))
        if method == "ours" or ours is None:
            continue
        key = "ssd" if "ssd" in method else "ref" if method.startswith("mamba") else "transformer"
        ratios[f"{key}_over_ours_seconds_L{L}"] = round(r[2] / ours[2], 2)
        if ours[3] and r[3]:
            ratios[f"{key}_over_ours_peak_mb_L{L}"] = round(r[3] / ours[3], 2)
    return ratios


def run(ctx):
    """The ``scan`` benchmark suite (``phenoclip benchmark --suite scan`` once registered)."""
    rows, ratios = scan_benchmark(quick=ctx.quick)
    table = Table(title="Selective scan, forward + backward (batch 2, d_model 64, d_inner 128, N 16)",
                  columns=["method", "L", "seconds", "extra peak MB", "note"],
                  rows=[[v if v is not None else "-" for v in r] for r in rows],
                  note="Each case in its own process; extra peak MB = VmHWM after minus VmRSS before the pass.")
    return SuiteResult(name="scan", tables=[table], metrics=ratios,
                       commands=["python -c 'from phenoclip_bench.scan import scan_benchmark; "
                                 f"print(scan_benchmark(quick={ctx.quick}))'"])
