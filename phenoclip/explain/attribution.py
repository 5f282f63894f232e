"""Captum attribution methods over one modality's dense input, in bounded memory.

Two pieces:

* :class:`DenseEncoder`: ``x -> (n, E)`` L2-normalised embeddings from a *dense float tensor* of
  one modality's encoder input (dosage ``(n, V)`` ALT counts; standardised expression
  ``(n, G)``; z-scored volumes ``(n, C, D, H, W)``), the same function the multimodal model
  computes from the batch sub-dict, but differentiable in every input element. For the
  dosage MLP that is the MLP on the centred dosages; the token encoders of variants look up a
  dosage *class* (``round``), which has no gradient, so they get a continuous relaxation
  (:func:`soft_variant_tokens`) that equals the model exactly at integer dosages.
* :func:`attribute_batch`: one captum method on a batch of individuals, returning per-element
  attributions and, where the method has one, the convergence delta per individual
  (``sum(attr) - (F(x) - F(baseline))``).

Memory: captum evaluates IG at ``n x steps`` points; ``internal_batch_size`` caps the rows of
one forward/backward pass (whole steps of the ``n`` individuals at a time), so the largest
tensors are ``max(internal_batch_size, n)`` rows of the input and never ``n x steps``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from phenoclip.data.batch import DOSAGE, IMAGES, VALUES
from phenoclip.models.heads import N_DOSAGE_CLASSES, encode_with_cls
from phenoclip.models.expression import TabularMLP
from phenoclip.models.variant import DosageMLP, VariantMamba, VariantTransformer

#: --method names -> what they are
METHODS = {
    "ig": "Integrated Gradients from the baseline to the input (captum's Gauss-Legendre rule, --steps points)",
    "deeplift": "DeepLift (rescale rule) through the encoder, chained with the head's IG multipliers",
    "gradientshap": "GradientShap (expected gradients from noisy inputs against baseline samples)",
    "saliency": "input gradient (signed)",
    "noise-tunnel": "SmoothGrad over Integrated Gradients (captum NoiseTunnel)",
}
#: modality -> the batch key of its dense input
INPUT_KEY = {"gene": DOSAGE, "expr": VALUES, "mri": IMAGES}


@dataclass
class MethodSettings:
    """How one method is run (the options that change numbers are part of the run fingerprint)."""

    method: str = "ig"
    steps: int = 50
    internal_batch_size: int = 64
    nt_samples: int = 10
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.steps < 2 or self.internal_batch_size < 1 or self.nt_samples < 1 or self.noise_std < 0:
            raise ValueError("steps >= 2, internal_batch_size >= 1, nt_samples >= 1 and noise_std >= 0 are required")

    def individuals_per_call(self, batch_size: int) -> int:
        """Individuals attributed per captum call so that a pass stays near ``internal_batch_size`` rows."""
        per_individual = {"gradientshap": self.nt_samples, "deeplift": 2}.get(self.method, 1)
        return max(1, min(batch_size, self.internal_batch_size // per_individual))


def soft_variant_tokens(tokens: nn.Module, dosage: Tensor) -> Tensor:
    """Tokens ``(B, L, W)`` of :class:`~phenoclip.models.variant.VariantTokens` for real-valued dosages.

    The dosage-class embedding becomes a piecewise-linear interpolation between the embeddings
    of classes 0, 1 and 2 (hat weights ``max(0, 1 - |x - c|)`` on ``x`` clamped to [0, 2]), so
    the tokens are continuous in the dosage and equal to ``tokens(dosage)`` at 0, 1 and 2.
    Missing calls must be imputed first (the ``missing`` class has no place on this line).
    Same algebra as the module's fast path: a ``(B, L, patch x classes)`` weight tensor times a
    small table, never ``(B, V, W)``.
    """
    x = dosage.clamp(0.0, 2.0)
    centres = torch.arange(N_DOSAGE_CLASSES, dtype=x.dtype, device=x.device)
    hat = (1.0 - (x[..., None] - centres).abs()).clamp(min=0.0)          # (B, V, C)
    hat = hat * (centres <= 2).to(x.dtype)                                # only the three dosage classes
    static = tokens._static()
    p, c, w, n_tok, v = tokens.patch, N_DOSAGE_CLASSES, tokens.width, tokens.n_tokens, tokens.n_variants
    emb = tokens.dosage.weight
    if p == 1:                                                            # one slot: emb is (classes, W)
        return hat @ emb + static
    emb = emb.view(p, c, w) if emb.shape[0] == p * c else emb.view(1, c, w).expand(p, c, w)
    if tokens.mixer.linear is not None:
        table = torch.einsum("ojw,jcw->jco", tokens.mixer.linear.weight.view(w, p, w), emb)
    else:
        table = emb
    hat = nn.functional.pad(hat, (0, 0, 0, n_tok * p - v))               # padding slots weigh nothing
    dynamic = hat.reshape(x.shape[0], n_tok, p * c) @ table.reshape(p * c, w)
    return dynamic + tokens.mixer(static.unsqueeze(0))


class DenseEncoder(nn.Module):
    """``x (n, ...) -> (n, E)``: one modality of a multimodal model as a function of its dense input.

    Parameters
    ----------
    model:
        The :class:`~phenoclip.models.multimodal.MultimodalModel` (eval mode).
    modality:
        ``gene``, ``expr`` or ``mri``.

    For genes ``x`` holds dosages with missing calls already imputed (see
    :meth:`impute`); the result equals ``model.encode(modality, {DOSAGE: x})`` wherever ``x``
    holds observed calls. With ``readout`` (a fine-tuned linear head that reads the modality's
    fitted read-out, :meth:`MultimodalModel.probe_embedding`) the function is that linear read-out.
    With ``components`` (a linear head whose block of this modality also holds the linear path's
    principal-component scores, :meth:`MultimodalModel.probe_features`) the output is ``(n, E + k)``:
    the embedding, then those scores (a read-out's: the read-out, then its eQTL-screened SNPs' standardised
    dosages).
    """

    def __init__(self, model: nn.Module, modality: str, readout: bool = False, components: bool = False):
        super().__init__()
        if modality not in INPUT_KEY:
            raise ValueError(f"no dense input for modality {modality!r} (explainable: {', '.join(INPUT_KEY)})")
        self.modality, self.key = modality, INPUT_KEY[modality]
        self.readout = model.readouts[modality] if readout and model.has_readout(modality) else None
        # only the modules this function uses: DeepLift hooks every ReLU it finds, and one
        # that never runs (another modality's, or the encoder beside a read-out) breaks its backward pass
        self._encoder = [model.encoders[modality]]   # in a list: not a submodule
        self.encoder = None if self.readout is not None else model.encoders[modality]
        self.projection = None if self.readout is not None else model.projections[modality]
        # the linear path of the embedding (if the model has one) is part of the function explained
        self.linear_path = (model.linear_paths[modality] if self.readout is None
                            and modality in getattr(model, "linear_paths", {}) else None)
        if components and not model.probe_components(modality):
            raise ValueError(f"the probe of {modality!r} reads no principal-component scores or SNPs beside it")
        #: columns of the embedding; any beyond are the principal-component scores, never normalised
        self.components, self.embed_dim = bool(components), int(model.embed_dim)

    @property
    def model_encoder(self) -> nn.Module:
        """The modality's encoder in the model (also when the read-out, not it, is explained)."""
        return self._encoder[0]

    @property
    def variant_tokens(self) -> bool:
        """Whether the encoder looks dosages up as token classes (relaxed by :func:`soft_variant_tokens`)."""
        return isinstance(self.encoder, (VariantTransformer, VariantMamba))

    @property
    def dosage_mlp(self) -> bool:
        return isinstance(self.model_encoder, DosageMLP)

    @property
    def relu_mlp(self) -> bool:
        """Whether every nonlinearity before the head is a ReLU module (DeepLift's rescale rule is exact
        there); a read-out is linear, so trivially."""
        return self.readout is not None or isinstance(self.encoder, (DosageMLP, TabularMLP))

    def features(self, x: Tensor) -> Tensor:
        enc = self.encoder
        if isinstance(enc, DosageMLP):
            # DosageMLP.forward centres on the column means and sends missing (< 0) calls to 0;
            # without that branch the function stays smooth along noisy paths below 0
            return enc.net(x - enc.column_mean)
        if isinstance(enc, VariantTransformer):
            return encode_with_cls(enc.encoder, soft_variant_tokens(enc.tokens, x), enc.cls_token)[0]
        if isinstance(enc, VariantMamba):
            return enc.encoder(enc.dropout(soft_variant_tokens(enc.tokens, x))).mean(1)
        return enc({self.key: x})

    def raw(self, x: Tensor) -> Tensor:
        """``(n, E)`` projected embedding (plus its linear path), or the read-out, before the L2
        normalisation; with ``components``, the principal-component scores after it (``(n, E + k)``)."""
        if self.readout is not None:
            z = self.readout({self.key: x})
            # a gene head's eQTL-screened SNPs beside the read-out (models.readout), linear in the dosages too
            return torch.cat([z, self.readout.eqtl_dosages({self.key: x})], dim=1) if self.components else z
        z = self.projection(self.features(x))
        if self.linear_path is None:
            return z
        z = z + self.linear_path({self.key: x})
        return torch.cat([z, self.linear_path.scores({self.key: x})], dim=1) if self.components else z

    def embed(self, raw: Tensor) -> Tensor:
        """The block a head reads from :meth:`raw`: the embedding L2-normalised, except a read-out's
        (linear); principal-component scores (``components``) as they are."""
        if self.readout is not None:
            return raw
        if self.components:
            e = self.embed_dim
            return torch.cat([nn.functional.normalize(raw[:, :e], dim=-1), raw[:, e:]], dim=1)
        return nn.functional.normalize(raw, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.raw(x))

    def impute(self, x: Tensor, column_mean: Tensor | None) -> Tensor:
        """Dosages with missing calls (< 0) replaced by ``column_mean`` (what the dosage MLP does)."""
        if self.modality != "gene":
            return x
        if column_mean is None:
            raise ValueError("gene inputs need column means to impute missing calls")
        return torch.where(x < 0, column_mean.to(x.dtype), x)


class _Linearised(nn.Module):
    """``(x, c) -> (n,)``: ``c . raw(x)``, the encoder up to its un-normalised embedding, in fixed directions."""

    def __init__(self, encoder: DenseEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return (self.encoder.raw(x) * c).sum(-1)


def head_multipliers(head, z_base: Tensor, z_input: Tensor, extra: tuple, steps: int) -> Tensor:
    """``(n, E)`` average gradient of ``head(z, *extra)`` on the straight path ``z_base -> z_input``.

    The Integrated-Gradients multipliers of the head: ``sum(c * (z_input - z_base))`` equals
    ``head(z_input) - head(z_base)`` up to the quadrature error of ``steps`` midpoints.
    """
    total = torch.zeros_like(z_input)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        z = (z_base + alpha * (z_input - z_base)).detach().requires_grad_(True)
        with torch.enable_grad():
            total += torch.autograd.grad(head(z, *extra).sum(), z)[0]
    return total / steps


def deeplift_chain(scorer: nn.Module, x: Tensor, base: Tensor, extra: tuple, steps: int) -> Tensor:
    """DeepLift (rescale rule) through the encoder and projection, chained with IG multipliers of the head.

    The head (L2 normalisation, then the contrastive loss or the fine-tuned layer) has no
    DeepLift rule: captum would use its gradient at the input, and the attributions would no
    longer add up to the change of the output (measured: they summed to about 0). DeepLift's
    chain rule for multipliers lets the head's multipliers come from elsewhere: its
    Integrated-Gradients multipliers in embedding space, :func:`head_multipliers`. ``scorer``
    needs ``encoder`` (a :class:`DenseEncoder`) and ``head(raw, *extra)``.
    """
    # imported here: captum (~1 s) loads only when attributions are computed (explain merge never pays it)
    from captum.attr import DeepLift

    with torch.no_grad():
        z_input, z_base = scorer.encoder.raw(x), scorer.encoder.raw(base)
    c = head_multipliers(scorer.head, z_base, z_input, extra, steps)
    return DeepLift(_Linearised(scorer.encoder).eval()).attribute(x, baselines=base, additional_forward_args=(c,))


@contextlib.contextmanager
def _quiet_captum():
    """Captum's hook and batching warnings describe its internals, not the user's input."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"captum\..*")
        warnings.filterwarnings("ignore", message=r".*(hook|Internal batch size|non-linear|Setting forward).*")
        yield


def attribute_batch(scorer: nn.Module, x: Tensor, baseline: Tensor, extra: tuple, settings: MethodSettings,
                    baseline_samples: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Attributions ``(n, ...)`` of ``scorer(x, *extra) -> (n,)`` and the delta per individual ``(n,)``.

    Parameters
    ----------
    scorer:
        A module whose forward returns one scalar per row; ``extra`` tensors are row-aligned
        with ``x`` (captum repeats them along with the inputs).
    baseline:
        ``(1, ...)`` reference input (IG, DeepLift, noise tunnel).
    baseline_samples:
        ``(m, ...)`` baseline distribution for GradientShap (default: ``baseline``).

    Deltas are NaN for saliency (no reference); for the noise tunnel, the mean absolute delta
    over its noisy copies.
    """
    # imported here: captum (~1 s) loads only when attributions are computed (explain merge never pays it)
    from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Saliency

    n = x.shape[0]
    base = baseline.expand_as(x).contiguous()
    ibs = max(settings.internal_batch_size, n)
    with _quiet_captum():
        if settings.method == "ig":
            attr, delta = IntegratedGradients(scorer).attribute(
                x, baselines=base, additional_forward_args=extra, n_steps=settings.steps,
                internal_batch_size=ibs, return_convergence_delta=True)
        elif settings.method == "noise-tunnel":
            nt = NoiseTunnel(IntegratedGradients(scorer))
            attr, delta = nt.attribute(
                x, baselines=base, additional_forward_args=extra, n_steps=settings.steps,
                internal_batch_size=ibs, nt_type="smoothgrad", nt_samples=settings.nt_samples,
                nt_samples_batch_size=1, stdevs=settings.noise_std, return_convergence_delta=True)
            delta = delta.abs().view(-1, n).mean(0) if delta.numel() != n else delta
        elif settings.method == "deeplift":
            attr = deeplift_chain(scorer, x, base, extra, settings.steps)
            with torch.no_grad():
                delta = attr.flatten(1).sum(1) - (scorer(x, *extra) - scorer(base, *extra))
        elif settings.method == "gradientshap":
            samples = baseline if baseline_samples is None else baseline_samples
            attr, delta = GradientShap(scorer).attribute(
                x, baselines=samples, additional_forward_args=extra, n_samples=settings.nt_samples,
                stdevs=settings.noise_std, return_convergence_delta=True)
            delta = delta.view(n, settings.nt_samples).mean(1)
        else:
            attr = Saliency(scorer).attribute(x, additional_forward_args=extra, abs=False)
            delta = torch.full((n,), math.nan)
    return attr.detach(), delta.detach().reshape(n).to(torch.float32)
