"""``phenoclip segment``: gene-informed lesion segmentation (MGI's fusion decoder) and monai baselines.

``phenoclip segment train --checkpoint runs/pre --images mri.h5 --genes expr.h5 --out runs/seg``
trains and tests a model; ``phenoclip segment predict --model runs/seg --images mri.h5 --out masks/``
writes one NIfTI mask per patient in the patient's original space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phenoclip.cli.common import Seed, Threads, capped_epochs, run_step

HELP = ("Segment lesions in 3D MRI with MGI's fusion decoder: the pretrained ViT's patch tokens and the Mamba's "
        "gene tokens meet in two attention-interaction modules and a mask output module (paper 003). "
        "'segment train' splits the patients with masks into train/validation/test, trains, and writes the model "
        "folder with metrics.tsv (Dice, HD95), metrics.json and PNG overlays; --decoder unet or attention-unet "
        "trains monai's networks on the images alone. 'segment predict' writes one NIfTI mask per patient in that "
        "patient's original space.")

app = typer.Typer(help=HELP, no_args_is_help=True)


@app.command("train", help="Train and test a segmentation model; writes the model folder, metrics.tsv, "
                           "metrics.json and overlays/*.png.")
def train(
    images: Path = typer.Option(..., "--images", help="Volumes store with masks (phenoclip preprocess mri with a mask column)."),
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist yet)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretraining checkpoint folder (phenoclip pretrain --out); needed by --decoder fusion. With unet / attention-unet it only puts its held-out patients into the test split, so the split matches a fusion run."),
    genes: Optional[Path] = typer.Option(None, "--genes", help="Expression store: the fusion decoder attends to the patient's gene tokens. Without it the gene branch gets no patient information."),
    decoder: str = typer.Option("fusion", "--decoder", help="fusion (MGI) | unet | attention-unet (monai, images only)."),
    epochs: int = typer.Option(40, "--epochs", min=1, help="Training epochs; the epoch with the best validation Dice is kept."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Decoder size: tiny | small | paper (default: the checkpoint's preset, else tiny)."),
    loss: str = typer.Option("dice-ce", "--loss", help="dice-ce (Dice + binary cross-entropy)."),
    freeze_encoders: bool = typer.Option(False, "--freeze-encoders", help="Keep the pretrained ViT and Mamba fixed (default: fine-tuned at a tenth of the learning rate)."),
    init: str = typer.Option("pretrained", "--init", help="pretrained | random: the fusion decoder on re-initialised encoders (the baseline)."),
    no_image_skips: bool = typer.Option(False, "--no-image-skips", help="Upsample the ViT tokens alone, as in the paper (default: the raw image also feeds each upsampling stage)."),
    gene_dropout: float = typer.Option(0.0, "--gene-dropout", help="Share of training patients whose expression is blanked at each step (modality dropout), so the decoder keeps reading the image."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Patients per step and process (under torchrun N processes with batch B train like one with N x B)."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Learning rate of the decoder (AdamW, warm-up then cosine)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", min=0.0, help="AdamW weight decay."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out test patients (the pretraining run's validation patients first)."),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Validation patients (best-epoch selection)."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="File of sample IDs (one a line): train and test on these only."),
    overlays: int = typer.Option(4, "--overlays", min=0, help="Test patients drawn as PNG overlays."),
    seed: int = Seed,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of this --out exactly where it stopped (its training checkpoint is kept in .OUT.partial beside --out; a stop signal, SIGTERM or SIGUSR1, saves it and exits 75)."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.train.stop import StopFlag

    with StopFlag():  # listen for SLURM's/torchrun's stop signal before the slow imports
        from phenoclip.segment.settings import FitSettings, SegmentSettings
        from phenoclip.segment.run import run_segment_train

        settings = SegmentSettings(
            images=str(images), out=str(out), checkpoint=str(checkpoint) if checkpoint else None,
            genes=str(genes) if genes else None, decoder=decoder, preset=preset, init=init,
            image_skips=not no_image_skips, keep=str(keep) if keep else None, test_fraction=test_fraction,
            val_fraction=val_fraction, overlays=overlays,
            fit=FitSettings(epochs=capped_epochs(epochs), batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                            freeze_encoders=freeze_encoders, loss=loss, seed=seed, gene_dropout=gene_dropout),
            resume=resume)
        with run_step("segment train", str(out) + "/", seed=seed, threads=threads) as log:
            result = run_segment_train(settings)
            log.outputs.append(str(out))
            t = result["test"]
            log.note(f"test Dice {t['dice_mean']:.4f} sd {t['dice_sd']:.4f}; HD95 {t['hd95_mm_mean']:.3f} mm; "
                     f"{result['n']['test']} patients; best epoch {result['best_epoch']}")


@app.command("predict", help="Write one NIfTI lesion mask per patient, in the patient's original space "
                             "(and metrics.tsv when the store has masks).")
def predict(
    model: Path = typer.Option(..., "--model", help="Output folder of phenoclip segment train."),
    images: Path = typer.Option(..., "--images", help="Volumes store (phenoclip preprocess mri)."),
    out: Path = typer.Option(..., "--out", help="Output folder for <sample>.nii.gz (must not exist yet)."),
    genes: Optional[Path] = typer.Option(None, "--genes", help="Expression store; required by a model trained with genes."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write <sample>_prob.nii.gz (float32 lesion probabilities)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The preprocessing manifest, to copy each original image's sform/qform codes (default: the one recorded in the store, if it still exists)."),
    overlays: int = typer.Option(4, "--overlays", min=0, help="Patients with a mask drawn as PNG overlays."),
    threads: Optional[int] = Threads,
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.segment.predict import run_segment_predict

    with run_step("segment predict", str(out) + "/", threads=threads) as log:
        result = run_segment_predict(model, str(images), str(out), genes=str(genes) if genes else None,
                                     probabilities=probabilities, manifest=str(manifest) if manifest else None,
                                     overlays=overlays)
        log.outputs.append(str(out))
        log.note(f"segmented {result['patients']} patients")
        if "test" in result:
            log.note(f"Dice {result['test']['dice_mean']:.4f}; HD95 {result['test']['hd95_mm_mean']:.3f} mm "
                     f"({result['with_truth']} patients with a mask)")
