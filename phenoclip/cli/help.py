"""Help that reads like plink2's or bcftools': plain text, 80 columns, pipeline order.

typer renders help with rich panels by default. At 80 columns those panels give each option a
third of the width, and rich reads the ``[default: 100]`` that click appends as a markup tag and
drops it ("Epochs ."). :func:`plain_help` switches every command of the tree to click's plain
formatter, where defaults, ``[required]`` and ranges are printed as written, names the value of
each option with one upper-case word (``N``, ``X``, ``PATH``, ``TEXT``) instead of typer's
``<list[Path]>``, lists the top-level commands in the order a pipeline runs them with a one-line
summary each, and keeps option names whole when a line is wrapped (``--val-fraction`` is never
split after its hyphen).
"""

from __future__ import annotations

from typer._click import _textwrap

#: top-level commands in the order a pipeline runs them, each with its one-line summary
PIPELINE = {
    "simulate": "Simulate a cohort as VCF, expression, NIfTI, EDF and HPO files.",
    "preprocess": "Genotypes, expression, NIfTI, signal or HPO files to stores.",
    "pretrain": "Pretrain encoders whose embeddings line up across modalities.",
    "finetune": "Fit prediction heads on a checkpoint; score new patients.",
    "retrieve": "Cross-modal retrieval, zero-shot HPO ranking, GWAS embeddings.",
    "explain": "Attribute a model's output to SNPs, genes or voxels (captum).",
    "segment": "Segment MRI lesions (MGI's fusion decoder or monai's U-Nets).",
    "benchmark": "Reproduce the papers' experiments beside the classic baselines.",
    "doctor": "Print versions, torch build, kernels, threads and tools found.",
}

#: typer's type label (inside <...>, list[...] removed) -> the metavar shown
_METAVARS = {"int": "N", "integer": "N", "float": "X", "path": "PATH", "Path": "PATH", "str": "TEXT",
             "text": "TEXT", "bool": "BOOL"}


def _metavar(label: str) -> str:
    """``'<list[Path]>'`` -> ``'PATH'``, ``'<int range>'`` -> ``'N'``, ``'<a|b>'`` -> ``'[a|b]'``."""
    inner = label.strip("<>")
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[5:-1]
    inner = inner.replace(" range", "")
    if "|" in inner:
        return f"[{inner}]"
    return _METAVARS.get(inner, inner.upper())


def _plain(command, top: bool) -> None:
    command.rich_markup_mode = None
    for param in getattr(command, "params", []):
        kind = getattr(param, "param_type_name", "")
        if kind == "argument" and param.metavar is None:
            # typer would show 'parts... <list[Path]>'; the name alone says it (usage adds '...')
            param.metavar = param.name.upper().rstrip("S") if param.nargs != 1 else param.name.upper()
            param.display_type_rich = lambda ctx: None
            continue
        if kind != "option" or param.is_flag or param.count:
            continue
        if param.metavar is None:
            try:
                param.metavar = _metavar(param.display_type(None))
            except Exception:  # an option type typer cannot describe without a context keeps its label
                continue
    commands = getattr(command, "commands", None)
    if commands is None:
        return
    if top:
        order = list(PIPELINE)
        command.commands = dict(sorted(commands.items(),
                                       key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        for name, sub in command.commands.items():
            if name in PIPELINE:
                sub.short_help = PIPELINE[name]
    else:
        for sub in commands.values():
            if sub.short_help is None and sub.help:
                sub.short_help = _summary(sub.help)
    for sub in command.commands.values():
        _plain(sub, top=False)


def _summary(text: str) -> str:
    """A subcommand's one-line summary: its help up to the first ':', ' (' or ';' (click would cut
    the first sentence at 45 characters, mid-word, with '...')."""
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    # a parenthesis cuts only after a clause long enough to say something ("NIfTI volumes (+ ..." does not)
    cuts = [i for i, least in ((first.find(": "), 10), (first.find(" ("), 20), (first.find("; "), 10)) if i >= least]
    return first[:min(cuts)] if cuts else first


def _whole_option_names() -> None:
    """Wrap help lines at spaces only: an option name is never cut after one of its hyphens.

    click wraps with :class:`textwrap.TextWrapper`'s default ``break_on_hyphens=True``; its
    ``wrap_text`` looks the wrapper class up at each call, so a subclass put in its place applies
    to every help page.
    """
    base = _textwrap.TextWrapper
    if getattr(base, "_phenoclip_whole_words", False):
        return

    class WholeWords(base):  # type: ignore[misc, valid-type]
        _phenoclip_whole_words = True

        def __init__(self, *args, **kwargs):
            kwargs["break_on_hyphens"] = False
            super().__init__(*args, **kwargs)

    _textwrap.TextWrapper = WholeWords


def plain_help(root) -> None:
    """Give the click command tree under ``root`` plain, 80-column, pipeline-ordered help."""
    _whole_option_names()
    _plain(root, top=True)
