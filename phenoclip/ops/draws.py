"""Random draws for a batch: one stream for the whole batch, or one stream per patient.

Augmentations, masks and corruptions draw tensors whose first dimension is the batch. With one
generator for the batch (:class:`BatchDraws`, what a ``torch.Generator`` argument means) a
patient's draws depend on which patients share its batch and where it sits. Data-parallel
training must not depend on that: two processes with batch B have to perturb every patient as
one process with batch 2B does. :class:`RowDraws` gives each row its own generator, seeded
from the training step and the patient's ID, so a patient's draws are the same on whichever
rank and at whichever batch position it lands.

Dropout inside the encoders draws too: :class:`RowDropout` takes its masks from the draws made
active with :func:`drawing` around an encoder call (the rows being encoded), and falls back to
torch's global RNG when none are active (inference, fine-tuning).

The per-row streams are consumed in call order, so a row's draws may depend only on that
row's own data (which draws it takes, and their shapes): a subset of rows (``rows(keep)``) draws
from the same generators, and a call that skips a row leaves its stream where it was.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from phenoclip.ops.devices import draw_device


def _to(t: torch.Tensor, device) -> torch.Tensor:
    return t if device is None else t.to(device)


class BatchDraws:
    """Draws from one ``torch.Generator`` (``None``: torch's global RNG) for the whole batch."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def _where(self, device) -> torch.device | str:
        return draw_device(self.generator, device if device is not None else "cpu")

    def rand(self, shape: Sequence[int], device=None) -> torch.Tensor:
        return _to(torch.rand(tuple(shape), generator=self.generator, device=self._where(device)), device)

    def randn(self, shape: Sequence[int], device=None) -> torch.Tensor:
        return _to(torch.randn(tuple(shape), generator=self.generator, device=self._where(device)), device)

    def randint(self, low: int, high: int, shape: Sequence[int], device=None) -> torch.Tensor:
        return _to(torch.randint(low, high, tuple(shape), generator=self.generator, device=self._where(device)), device)

    def rows(self, keep: torch.Tensor) -> "BatchDraws":
        """The draws for a subset of the rows: the batch's stream serves whichever rows ask."""
        return self


class _RowStream:
    """One row's generators at one step: a CPU generator, and one per accelerator the row draws on,
    all seeded alike. Each is consumed in call order; which one a draw takes depends only on where
    the tensor lives, so a row draws the same on every rank and at every batch position."""

    __slots__ = ("seed", "cpu", "_on")

    def __init__(self, generator: torch.Generator):
        self.cpu, self.seed, self._on = generator, generator.initial_seed(), {}

    def on(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self.cpu
        if device.index is None and device.type == "cuda":  # "cuda" and "cuda:0" are one stream
            device = torch.device("cuda", torch.cuda.current_device())
        g = self._on.get(device)
        if g is None:
            g = self._on[device] = torch.Generator(device=device).manual_seed(self.seed)
        return g


class RowDraws:
    """One generator per batch row; every draw of shape ``(n, ...)`` takes row ``i`` from generator ``i``.

    On the CPU the rows draw from the CPU generators given. A draw asked for on an accelerator
    (``device=``) is made there, row by row, from a generator of that device seeded like the row's
    CPU one: drawing a pretraining batch's dropout masks on the CPU and copying them over cost the
    paper preset about 12 s a step on a GPU (4.7 samples/s on an H200).
    """

    def __init__(self, generators: list[torch.Generator]):
        self._streams = [_RowStream(g) for g in generators]

    @classmethod
    def for_batch(cls, step_key: int, sample_ids: Sequence[str]) -> "RowDraws":
        """Generators seeded from ``step_key`` (the same on every rank at a given step) and each
        patient's ID (a hash, so neither the batch order nor the rank matters)."""
        return cls([torch.Generator().manual_seed(_row_seed(step_key, s)) for s in sample_ids])

    def __len__(self) -> int:
        return len(self._streams)

    def _stack(self, shape: Sequence[int], device, draw, fill, dtype=None) -> torch.Tensor:
        shape = tuple(shape)
        if not shape or shape[0] != len(self._streams):
            raise ValueError(f"a per-row draw needs shape (rows={len(self._streams)}, ...), got {shape}")
        if not self._streams:
            return _to(draw(shape, None), device)
        where = torch.device(device) if device is not None else None
        if where is None or where.type == "cpu":
            return _to(torch.stack([draw(shape[1:], row.cpu) for row in self._streams]), device)
        out = torch.empty(shape, device=where, dtype=dtype)
        for row, stream in zip(out, self._streams):
            fill(row, stream.on(where))
        return out

    def rand(self, shape: Sequence[int], device=None) -> torch.Tensor:
        return self._stack(shape, device, lambda s, g: torch.rand(s, generator=g),
                           lambda row, g: row.uniform_(0.0, 1.0, generator=g))

    def randn(self, shape: Sequence[int], device=None) -> torch.Tensor:
        return self._stack(shape, device, lambda s, g: torch.randn(s, generator=g),
                           lambda row, g: row.normal_(0.0, 1.0, generator=g))

    def randint(self, low: int, high: int, shape: Sequence[int], device=None) -> torch.Tensor:
        return self._stack(shape, device, lambda s, g: torch.randint(low, high, s, generator=g),
                           lambda row, g: row.random_(low, high, generator=g), dtype=torch.int64)

    def rows(self, keep: torch.Tensor) -> "RowDraws":
        """The generators of the rows ``keep`` selects (bool mask or indices), shared, not copied."""
        index = torch.as_tensor(keep).cpu()
        index = torch.nonzero(index).flatten() if index.dtype == torch.bool else index.flatten()
        picked = RowDraws([])
        picked._streams = [self._streams[i] for i in index.tolist()]
        return picked


Draws = Union[BatchDraws, RowDraws]


def as_draws(source: torch.Generator | BatchDraws | RowDraws | None) -> Draws:
    """A ``torch.Generator`` (or None) becomes :class:`BatchDraws`; draws pass through."""
    if isinstance(source, (BatchDraws, RowDraws)):
        return source
    return BatchDraws(source)


def _row_seed(step_key: int, sample_id: str) -> int:
    digest = hashlib.blake2b(f"{int(step_key)}\0{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


_ACTIVE: list[Draws] = []


@contextmanager
def drawing(draws: Draws) -> Iterator[Draws]:
    """Make ``draws`` the source of :class:`RowDropout`'s masks inside the block (the rows of the
    batch about to be encoded, in order)."""
    _ACTIVE.append(draws)
    try:
        yield draws
    finally:
        _ACTIVE.pop()


class RowDropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from the active draws (:func:`drawing`), row by row.

    Same parameters and behaviour as ``nn.Dropout`` (inverted scaling by ``1 / (1 - p)``); with no
    draws active it is ``nn.Dropout`` itself. Layers are converted in place by :func:`row_dropout`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or not _ACTIVE:
            return super().forward(x)
        keep = _ACTIVE[-1].rand(x.shape, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


def row_dropout(module: nn.Module) -> int:
    """Turn every ``nn.Dropout`` of ``module`` into :class:`RowDropout` (in place; no parameters
    change); returns how many. Attention-weight dropout inside ``nn.MultiheadAttention`` is a
    function call, not a layer, and keeps torch's global RNG."""
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Dropout:
            layer.__class__ = RowDropout
            changed += 1
    return changed
