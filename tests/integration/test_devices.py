"""Device handling of pretraining: ``--device`` resolution, batch moves, random draws off the CPU.

No GPU is here, so the draws are checked on torch's ``meta`` device: like CUDA, it refuses an
element-wise op that mixes its tensors with CPU ones, which is exactly the mistake a CPU
``torch.Generator`` invites. A draw that forgot to move fails these tests as it would on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from phenoclip.data.augment import AugmentSettings, augment_batch
from phenoclip.data.batch import DOSAGE, IMAGES, PRESENT, SIGNALS, TERMS, VALUES
from phenoclip.errors import UsageError
from phenoclip.models.masks import haplotype_block_mask, random_patch_mask
from phenoclip.objectives.tabular import ScarfCorruption, VimeMasking
from phenoclip.ops.devices import module_device, resolve_device, to_device

META = torch.device("meta")


def test_resolve_device_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="no CUDA device") as e:
        resolve_device("cuda")
    assert e.value.exit_code == UsageError.exit_code
    with pytest.raises(UsageError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_resolve_device_with_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UsageError, match="2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(UsageError, match="2 CUDA device"):
        resolve_device("cuda:x")


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    batch = {"sample_ids": ["P1", "P2"], "gene": {DOSAGE: torch.ones(2, 3), PRESENT: torch.tensor([True, False])},
             "pair": (torch.zeros(1), 5)}
    moved = to_device(batch, META)
    assert moved["sample_ids"] == ["P1", "P2"]
    assert moved["gene"][DOSAGE].device == META and moved["gene"][PRESENT].device == META
    assert moved["pair"][0].device == META and moved["pair"][1] == 5
    assert batch["gene"][DOSAGE].device.type == "cpu"  # the input is not changed
    assert module_device(torch.nn.Linear(2, 2).to(META)) == META
    assert module_device(torch.nn.ReLU()).type == "cpu"


def _meta_batch() -> dict:
    terms = torch.tensor([[3, 5, -1], [2, -1, -1]])
    batch = {"gene": {DOSAGE: torch.randint(0, 3, (2, 50)).float()},
             "expr": {VALUES: torch.randn(2, 20)},
             "mri": {IMAGES: torch.randn(2, 1, 8, 8, 8)},
             "signal": {SIGNALS: torch.randn(2, 2, 100)},
             "hpo": {TERMS: terms}}
    for m in batch.values():
        m[PRESENT] = torch.tensor([True, True])
    return to_device(batch, META)


def test_augmentations_follow_the_batch_device():
    """CPU-generator draws land on the batch's device (they raised on a GPU before)."""
    out = augment_batch(_meta_batch(), AugmentSettings(mri_intensity=0.1), torch.Generator().manual_seed(0))
    for m, key in (("gene", DOSAGE), ("expr", VALUES), ("mri", IMAGES), ("signal", SIGNALS), ("hpo", TERMS)):
        assert out[m][key].device == META, m


def test_tabular_corruptions_follow_the_input_device():
    g = torch.Generator().manual_seed(0)
    marginals = torch.randn(30, 20).to(META)
    x = torch.randn(4, 20).to(META)
    for corrupt in (ScarfCorruption(marginals, 0.6), VimeMasking(0.3, marginals), VimeMasking(0.3)):
        x_tilde, mask = corrupt(x, generator=g)
        assert x_tilde.device == META and mask.device == META


def test_tabular_corruption_draws_do_not_depend_on_the_device():
    """The same generator state gives the same corruption whatever device the data are on: the
    draws happen on the generator's device (here: both CPU; the meta test shows they then move)."""
    marginals, x = torch.randn(30, 20), torch.randn(4, 20)
    a = ScarfCorruption(marginals, 0.5)(x, generator=torch.Generator().manual_seed(3))
    b = ScarfCorruption(marginals.double(), 0.5)(x.double(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0].double(), b[0])


def test_pretext_masks_are_made_on_the_asked_device():
    g = torch.Generator().manual_seed(0)
    assert random_patch_mask(2, 16, 0.5, generator=g, device=META).device == META
    blocks = torch.arange(40) // 4  # a GPU buffer is copied to the CPU first; meta tensors cannot be
    assert haplotype_block_mask(blocks, 0.3, 2, generator=g, device=META).device == META


def test_draws_happen_on_the_generators_device():
    """torch refuses a CPU generator for a CUDA draw ('Expected a cuda device type for generator');
    meta does not, so the rule itself is checked: draw where the generator lives, then move."""
    from phenoclip.ops.devices import draw_device

    assert draw_device(torch.Generator(), META).type == "cpu"
    assert draw_device(None, META) == META


def test_paper_preset_on_a_cpu_is_warned_about(tmp_path, capsys, monkeypatch):
    """On 2 cores it ran at 0.2 samples/s and was killed for memory at batch 32: say so up front."""
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.errors import PhenoclipError
    from phenoclip.pretrain.run import run_pretrain

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    missing = str(tmp_path / "absent.h5")
    for preset, warned in (("paper", True), ("tiny", False)):
        cfg = PretrainSettings(modalities=["gene", "expr"], data=[missing, missing], preset=preset, device="auto")
        with pytest.raises(PhenoclipError):  # the missing store stops it right after the check
            run_pretrain(cfg, tmp_path / f"out_{preset}", log=lambda s: None)
        assert ("paper preset is sized for GPUs" in capsys.readouterr().err) == warned
