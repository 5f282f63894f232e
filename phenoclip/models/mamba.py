"""Mamba (selective state space) blocks and the gene-sequence encoder built from them (MGI).

:class:`MambaBlock` has the parameters, state-dict keys and initialisation of
``mamba_ssm.modules.mamba_simple.Mamba`` and computes the same function as its reference
("slow") path, with :func:`phenoclip.ops.scan.selective_scan` doing the scan; that hands off to
mamba-ssm's CUDA kernel when it is installed and the input is on a GPU. Weights move both ways
between the two classes with ``load_state_dict(strict=True)``.

:class:`MambaEncoder` stacks pre-norm residual Mamba layers with the key layout of mamba-ssm's
``MixerModel`` (``layers.{i}.norm``, ``layers.{i}.mixer``, ``norm_f``), without the embedding:
it takes token embeddings (B, L, d_model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from phenoclip.ops.scan import selective_scan

NORMS = {"rms": nn.RMSNorm, "layer": nn.LayerNorm}


class MambaBlock(nn.Module):
    """One Mamba mixer: (B, L, d_model) -> (B, L, d_model).

    in_proj -> (x, z); x -> causal depthwise conv (d_conv) -> SiLU -> x_proj -> (dt, B, C);
    y = selective_scan(x, dt_proj(dt), A=-exp(A_log), B, C, D, z, softplus(+ dt bias));
    out_proj(y). d_inner = expand * d_model; dt_rank "auto" = ceil(d_model / 16).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, device=None, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                raise ValueError(f"{name} must be a number >= 1; got {value!r}")
        if dt_rank != "auto" and (isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or an integer >= 1; got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max; got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant'; got {dt_init!r}")
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        # Submodules are created in mamba-ssm's order, so one seed gives both classes equal weights.
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **kw)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        # dt_proj's weight is scaled by dt_rank^-1/2 so dt keeps unit-order variance at the start
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        # The bias is set so that softplus(bias) = dt starts log-uniform in [dt_min, dt_max]: the
        # step sizes (and so the memory lengths 1/dt) cover two decades of time scales at once.
        # bias = dt + log(1 - exp(-dt)) is softplus' inverse written without overflow.
        dt = torch.exp(torch.rand(self.d_inner, **kw) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # a model-wide "zero all biases" init must skip it
        # S4D-real init A = -(1, 2, ..., N) for every channel: a spread of decay rates. The log is
        # learnt so A stays negative (a stable, decaying state); kept in float32 as mamba-ssm does.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True  # decay would pull A towards -1 for every state
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # skip connection, float32
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        L = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])  # padding d_conv-1 on both sides; keep the causal part
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); bias added in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        y = selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class _Layer(nn.Module):
    """Pre-norm mixer(s) of one residual layer; returns the update added to the residual stream."""

    def __init__(self, d_model: int, norm: str, norm_eps: float, bidirectional: bool, block_kw: dict):
        super().__init__()
        self.norm = NORMS[norm](d_model, eps=norm_eps)
        self.mixer = MambaBlock(d_model, **block_kw)
        self.mixer_rev = MambaBlock(d_model, **block_kw) if bidirectional else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(x)
        out = self.mixer(h)
        if self.mixer_rev is not None:
            out = out + _reverse(self.mixer_rev(_reverse(h, lengths)), lengths)
        return out


def _reverse(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence's first ``lengths[b]`` tokens, leaving padding behind them. (B, L, D)."""
    if lengths is None:
        return x.flip(1)
    pos = torch.arange(x.shape[1], device=x.device)
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, L)
    return x.gather(1, idx[..., None].expand_as(x))


class MambaEncoder(nn.Module):
    """Residual Mamba layers over token embeddings: (B, L, d_model) -> (B, L, d_model).

    Each layer adds ``mixer(norm(x))`` to the residual stream and a final ``norm_f`` follows, as
    in mamba-ssm's ``MixerModel``. With ``bidirectional`` each layer has a second mixer
    (``mixer_rev``) run over the reversed sequence, the two outputs summed: genes along a
    chromosome have no reading direction, and a causal scan alone would let the first gene see
    nothing. ``mask`` (B, L), True for real tokens, lets padding sit anywhere: tokens are packed
    to the front so that no padding enters a scan before a real token.
    """

    def __init__(self, d_model: int, n_layers: int, *, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 norm: str = "rms", norm_eps: float = 1e-5, bidirectional: bool = False, **block_kw):
        super().__init__()
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be an integer >= 1; got {n_layers!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
        block_kw.update(d_state=d_state, d_conv=d_conv, expand=expand)
        self.d_model, self.bidirectional = d_model, bidirectional
        self.layers = nn.ModuleList(_Layer(d_model, norm, norm_eps, bidirectional, block_kw)
                                    for _ in range(n_layers))
        self.norm_f = NORMS[norm](d_model, eps=norm_eps)
        # GPT-2 / mamba-ssm scheme: each output projection feeding the residual stream is scaled by
        # 1/sqrt(number of such outputs) so the stream's variance does not grow with depth.
        # Linear biases start at zero, except dt_proj's (see MambaBlock), also as mamba-ssm does.
        n_residuals = n_layers * (2 if bidirectional else 1)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d_model), mask (B, L) bool or None -> (B, L, d_model); padded rows are zero."""
        lengths = order = None
        if mask is not None:
            mask = mask.bool()
            order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # real tokens first
            x = x.gather(1, order[..., None].expand_as(x))
            lengths = mask.sum(1)
        for layer in self.layers:
            x = x + layer(x, lengths)
        x = self.norm_f(x)
        if mask is not None:
            x = torch.empty_like(x).scatter_(1, order[..., None].expand_as(x), x) * mask[..., None]
        return x

    @staticmethod
    def pool(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over real tokens: x (B, L, D), mask (B, L) -> (B, D)."""
        if mask is None:
            return x.mean(1)
        m = mask.to(x.dtype)[..., None]
        return (x * m).sum(1) / m.sum(1).clamp(min=1)
