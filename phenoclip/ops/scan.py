"""Mamba's selective scan: a linear-time, linear-memory PyTorch version and its sequential twin.

Contract (the same as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``)::

    u, delta: (B, D, L)   A: (D, N) real   D: (D,)   z: (B, D, L)   delta_bias: (D,)
    B, C: (B, N, L) input-dependent, (B, G, N, L) grouped (channel d uses group d // (D // G)),
          or (D, N) fixed
    dt = softplus(delta + delta_bias) (softplus only if delta_softplus)
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t      h: (B, D, N), h_{-1} = 0
    out_t = (C_t . h_t + D * u_t) * silu(z_t)             -> out (B, D, L) in u's dtype
    last_state = h_{L-1}: (B, D, N), float32 (float64 for float64 inputs)

Half-precision inputs are computed in float32 as mamba-ssm does; float64 inputs stay float64
(mamba-ssm has no float64 path) so gradient checks can be tight. On CUDA tensors, when
mamba-ssm's compiled kernel is importable, :func:`selective_scan` hands the call to it.

Our scan runs the recurrence in blocks of ``W`` steps (sized so one (W, B, D, N) tensor is about
``BLOCK_BYTES``) carried one after another, each block split into chunks of ``CHUNK`` steps scanned
side by side: (1) a loop over the T steps of every chunk at once, from zero states; (2) a short
loop over the chunks carrying the true state across chunk boundaries; (3) one vectorised fix-up
``h_t += exp(A * (dt_s + ... + dt_t)) * state entering the chunk`` (s: the chunk's first step).
Nothing is divided and, as dt >= 0 and A < 0 in Mamba, every exponent is <= 0, so nothing
overflows (exp(S_t) * exp(-S_s) with S the running sum of dt * A, the unstabilised form, would).
Python loops run T + W/T times per block instead of W.

The backward pass saves only the inputs and one (B, D, N) state per block, recomputes each block's
states, and runs the adjoint recurrence mu_t = a_t * (C_t gy_t + mu_{t+1}) (mu_t = a_t lambda_t,
lambda_t = dLoss/dh_t) backwards with the same chunked scan, so time and memory are linear in L.
mamba-ssm's own ``selective_scan_ref`` indexes a (B, D, L, N) tensor per step, and each index's
backward writes a full-size gradient, which makes its backward quadratic in L. Like that
reference (and unlike the CUDA kernel, which ignores it) ours also differentiates last_state.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from phenoclip.progress import warn

CHUNK = 8  # steps per chunk: the step loop runs CHUNK times per block, the chunk loop W/CHUNK
BLOCK_BYTES = 1 << 21  # bytes of one (W, B, D, N) block tensor; bounds the working memory


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan with mamba-ssm's arguments and results; see the module docstring.

    Returns ``out`` (B, D, L), or ``(out, last_state)`` with ``last_state`` (B, D, N).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    if u.is_cuda and u.dtype != torch.float64:
        kernel = _cuda_kernel()
        if kernel is not None:
            return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if A.is_complex():
        raise ValueError("complex A needs mamba-ssm's CUDA kernel; the PyTorch scan takes real A")
    u_, dt, A_, B_, C_ = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    y, last = _ChunkedScan.apply(u_, dt, A_, B_, C_)
    out = _finish(y, u_, D, z, u.dtype)
    return (out, last) if return_last_state else out


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
    """The reference twin: one recurrence step per position, differentiated by autograd.

    Same arguments and results as :func:`selective_scan`; slow (L Python steps) and its autograd
    graph holds every state (L * B * D * N numbers), so it is for tests and short sequences.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        raise ValueError("the PyTorch scan takes real A")
    u_, dt, A_, B_, C_ = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    # unbind (not indexing) per step: its backward stacks once instead of once per step
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u_.unbind(-1), _steps(B_, u.shape), _steps(C_, u.shape)):
        h = torch.exp(dt_t[..., None] * A_) * h + (dt_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))  # (B, D)
    out = _finish(torch.stack(ys, -1), u_, D, z, u.dtype)
    return (out, h) if return_last_state else out


def _check(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, L = u.shape
    if L < 1:
        raise ValueError("the sequence length L must be at least 1")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (dim={d}, N); got {tuple(A.shape)}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = ((M.dim() == 2 and M.shape == (d, n)) or (M.dim() == 3 and M.shape == (b, n, L))
              or (M.dim() == 4 and M.shape[0] == b and M.shape[2:] == (n, L) and d % M.shape[1] == 0))
        if not ok:
            raise ValueError(f"{name} must be ({d}, {n}), ({b}, {n}, {L}) or ({b}, G, {n}, {L}) with {d} % G == 0; "
                             f"got {tuple(M.shape)}")
    for name, v, shape in (("D", D, (d,)), ("z", z, (b, d, L)), ("delta_bias", delta_bias, (d,))):
        if v is not None and tuple(v.shape) != shape:
            raise ValueError(f"{name} must be {shape}; got {tuple(v.shape)}")


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to the compute dtype (float32, or float64 for float64 input) and form dt (B, D, L)."""
    ct = torch.promote_types(torch.promote_types(u.dtype, A.dtype), torch.float32)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return u.to(ct), dt, A.to(ct), B.to(ct), C.to(ct)


def _finish(y, u, D, z, dtype):
    """Skip connection and gate: (y + D u) * silu(z), cast back to the input dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def _steps(M, shape):
    """B or C as L per-step tensors broadcastable to (B, D, N) (a fixed (D, N) is repeated)."""
    if M.dim() == 2:
        return [M] * shape[-1]
    if M.dim() == 3:
        return [m[:, None] for m in M.unbind(-1)]  # (B, 1, N)
    return [m.repeat_interleave(shape[1] // M.shape[1], dim=1) for m in M.unbind(-1)]  # (B, D, N)


def _block(M, s, e, dim):
    """Positions s:e of B or C in time-major form, broadcastable to (W, B, D, N)."""
    if M.dim() == 2:
        return M  # (D, N) broadcasts as it is
    m = M[..., s:e].movedim(-1, 0)  # (W, B, N) or (W, B, G, N)
    return m[:, :, None] if M.dim() == 3 else m.repeat_interleave(dim // M.shape[1], dim=2)


def _fold(g, M, dim):
    """Sum a (W, B, D, N) gradient back to the layout of B or C (for positions of one block)."""
    if M.dim() == 2:
        return g.sum((0, 1))  # (D, N)
    if M.dim() == 3:
        return g.sum(2).movedim(0, -1)  # (B, N, W)
    groups = M.shape[1]
    return g.unflatten(2, (groups, dim // groups)).sum(3).movedim(0, -1)  # (B, G, N, W)


def _decay(log_a):
    """exp(log_a), with exponents clamped above the underflow edge.

    Products of many decays otherwise fall into subnormal floats, which x86 processes about 100x
    slower; a decay of exp(-80) instead of a smaller one changes a state by under 1e-34 of the
    carried state (float32; exp(-700) for float64).
    """
    return torch.exp(log_a.clamp_(min=math.log(torch.finfo(log_a.dtype).tiny) + 7.0))


def _scan(a, dt, A, x, h0, chunk):
    """h_t = a_t * h_{t-1} + x_t along dim 0, from h_{-1} = h0, where a_t = exp(dt_t * A).

    a, x: (W, B, D, N); dt: (W, B, D); A: (D, N); h0: (B, D, N). Chunks of ``chunk`` steps are
    scanned side by side from zero, then the true state entering each chunk is carried across
    and added times the decay since the chunk start, exp(A * cumsum(dt)) <= 1.
    """
    W = a.shape[0]
    T = min(chunk, W)
    pad = -W % T
    if pad:  # a = 1 (dt = 0), x = 0 past the end leaves the state unchanged
        a = torch.cat([a, a.new_ones((pad,) + a.shape[1:])])
        x = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])])
        dt = torch.cat([dt, dt.new_zeros((pad,) + dt.shape[1:])])
    G = a.shape[0] // T
    a, x = a.unflatten(0, (G, T)), x.unflatten(0, (G, T))  # (G, T, B, D, N)
    h = torch.empty_like(x)
    h[:, 0] = x[:, 0]
    for j in range(1, T):  # every chunk at once, from a zero state
        torch.addcmul(x[:, j], a[:, j], h[:, j - 1], out=h[:, j])
    if G == 1 and h0 is None:
        return h[0, :W]
    decay = _decay(dt.unflatten(0, (G, T)).cumsum(1)[..., None] * A)  # (G, T, B, D, N)
    enter = torch.empty_like(h[:, 0])  # (G, B, D, N): true state entering each chunk
    state = h0 if h0 is not None else torch.zeros_like(enter[0])
    for g in range(G):
        enter[g] = state
        state = torch.addcmul(h[g, -1], decay[g, -1], state)
    h.addcmul_(decay, enter[:, None])
    return h.flatten(0, 1)[:W]


def _block_len(b, d, n, itemsize, L):
    """Steps per block: a multiple of CHUNK with one (W, B, D, N) tensor near BLOCK_BYTES."""
    w = max(1, BLOCK_BYTES // (b * d * n * itemsize)) // CHUNK * CHUNK
    return min(max(w, CHUNK), L)


class _ChunkedScan(torch.autograd.Function):
    """(u, dt, A, B, C) -> (y (B, D, L), last_state (B, D, N)): the scan without D, z and softplus."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        b, d, L = u.shape
        W = _block_len(b, d, A.shape[1], u.element_size(), L)
        y = u.new_empty(b, d, L)
        state = u.new_zeros(b, d, A.shape[1])
        starts = []
        for s in range(0, L, W):
            e = min(s + W, L)
            dt_b, u_b = dt[..., s:e].movedim(-1, 0), u[..., s:e].movedim(-1, 0)  # (W, B, D)
            a = _decay(dt_b[..., None] * A)  # (W, B, D, N)
            x = (dt_b * u_b)[..., None] * _block(B, s, e, d)
            starts.append(state)
            h = _scan(a, dt_b, A, x, state if s else None, CHUNK)
            state = h[-1].clone()  # a view would keep the whole block's h alive in `starts`
            y[..., s:e] = (h * _block(C, s, e, d)).sum(-1).movedim(0, -1)
        ctx.save_for_backward(u, dt, A, B, C, torch.stack(starts))
        ctx.block = W
        return y, state

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):
        u, dt, A, B, C, starts = ctx.saved_tensors
        b, d, L = u.shape
        W = ctx.block
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B) if B.dim() == 2 else torch.empty_like(B)
        dC = torch.zeros_like(C) if C.dim() == 2 else torch.empty_like(C)
        # mu entering the last position from the right: the last state's own gradient
        mu_next = g_last if g_last is not None else u.new_zeros(starts.shape[1:])
        for k in reversed(range(starts.shape[0])):
            s = k * W
            e = min(s + W, L)
            dt_b, u_b = dt[..., s:e].movedim(-1, 0), u[..., s:e].movedim(-1, 0)  # (W, B, D)
            gy_b = gy[..., s:e].movedim(-1, 0)
            B_b, C_b = _block(B, s, e, d), _block(C, s, e, d)
            a = _decay(dt_b[..., None] * A)  # (W, B, D, N)
            h = _scan(a, dt_b, A, (dt_b * u_b)[..., None] * B_b, starts[k] if s else None, CHUNK)  # recomputed
            cg = C_b * gy_b[..., None]  # dLoss/dh_t through y_t alone
            # mu_t = a_t * lambda_t = a_t * (cg_t + mu_{t+1}): the adjoint scan, run backwards in time
            mu = _scan(a.flip(0), dt_b.flip(0), A, (a * cg).flip(0), mu_next, CHUNK).flip(0)
            lam = cg
            lam[:-1] += mu[1:]
            lam[-1] += mu_next
            mu_next = mu[0].clone()  # mu is overwritten below
            # dLoss/d(dt_t * A) = lambda_t * a_t * h_{t-1} = mu_t * h_{t-1}
            w = mu
            w[1:] *= h[:-1]
            w[0] *= starts[k]
            lam_b = (lam * B_b).sum(-1)  # (W, B, D): dLoss/d(dt_t u_t)
            ddt[..., s:e] = ((w * A).sum(-1) + lam_b * u_b).movedim(0, -1)
            du[..., s:e] = (lam_b * dt_b).movedim(0, -1)
            dA += (w * dt_b[..., None]).sum((0, 1))
            gB, gC = _fold(lam * (dt_b * u_b)[..., None], B, d), _fold(h * gy_b[..., None], C, d)
            if B.dim() == 2:
                dB += gB
            else:
                dB[..., s:e] = gB
            if C.dim() == 2:
                dC += gC
            else:
                dC[..., s:e] = gC
        return du, ddt, dA, dB, dC


@functools.lru_cache(maxsize=1)
def _cuda_kernel():
    """mamba-ssm's ``selective_scan_fn`` when its compiled CUDA extension is present, else None.

    Called only for CUDA tensors, so the fallback is said once per process, with the reason: a
    missing or broken kernel costs speed on a GPU, never correctness, and should not go unseen.
    """
    try:
        # imported here: mamba-ssm pulls triton (~10 s) and only CUDA calls need it
        import selective_scan_cuda  # the compiled extension (a stub module on CPU installs has no fwd)

        if not hasattr(selective_scan_cuda, "fwd"):
            warn("scan: mamba-ssm's CUDA kernel is not built here (selective_scan_cuda has no fwd: installed "
                 "with MAMBA_SKIP_CUDA_BUILD); the GPU runs phenoclip's PyTorch scan (same results, slower)")
            return None
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # any import failure means: no kernel, use ours
        warn(f"scan: mamba-ssm's CUDA kernel could not be imported ({type(e).__name__}: {e}); the GPU runs "
             "phenoclip's PyTorch scan (same results, slower)")
        return None
    return selective_scan_fn
