"""``report/README.md`` and ``report/results.json``: what a reviewer reads first.

Layout: how the report was made (command, date, seed, cohort and its truth file, machine,
package versions), an overview of the suites, one table of speed ratios gathered from the speed
suites, every shortfall against a baseline or target in one list, then each suite's tables,
figures and the commands behind its numbers.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from phenoclip import __version__

#: packages whose versions change the numbers
PACKAGES = ["torch", "monai", "scikit-learn", "numpy", "scipy", "h5py", "captum", "mamba-ssm", "cyvcf2", "nibabel",
            "faiss-cpu", "safetensors"]

#: (suite, metric key, label, target text, test of the target) for the one table of speed ratios
SPEED_RATIOS = [
    ("ingest", "main_ours_over_plink2_seconds", "VCF ingest, 1,000 x 40,000: phenoclip / plink2 --make-pgen time "
     "(x, 2 threads each)", "<= 3", lambda v: v <= 3),
    ("ingest", "large_ours_over_plink2_seconds", "VCF ingest, 1,000 x 100,000: phenoclip / plink2 --make-pgen time "
     "(x, 2 threads each)", "<= 3", lambda v: v <= 3),
    # keys ending in "_L*": the longest length measured (--quick stops at shorter lengths)
    # mamba-ssm's selective_scan_ref is a correctness oracle (a quadratic backward), not a speed
    # reference: its figures stay in the scan table, without a target
    ("pretrain", "transformer_over_ours_seconds_L*",
     "selective scan at L={L}: TransformerEncoderLayer / ours (x)", "> 1 from 16k", lambda v: v > 1),
    ("pretrain", "ssd_over_ours_seconds_L*",
     "selective scan fwd+bwd at L={L}: Mamba-2 chunked SSD (pure PyTorch) / ours (x)", "> 1", lambda v: v > 1),
    ("pretrain", "transformer_over_ours_peak_mb_L*",
     "selective scan at L={L}: TransformerEncoderLayer / ours peak memory (x)", "> 1", lambda v: v > 1),
    ("pretrain", "data_wait_share_tiny", "pretraining (tiny): share of step time waiting for data", "< 10 %",
     lambda v: v < 0.10),
    ("retrieve", "retrieve_speed/ours_over_faiss", "exact top-10 search: ours / faiss IndexFlatIP (x queries/s)",
     ">= 1", lambda v: v >= 1),
    ("retrieve", "retrieve_speed/ours_over_full", "exact top-10 search: ours / full-matrix torch.topk (x)", "> 1",
     lambda v: v > 1),
]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "phenoclip": __version__}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    gpu = "none"
    try:
        # imported here, not at the top: guarded (the report is still written where torch fails to load),
        # and phenoclip_bench imports this module before --threads is applied (see run_suites)
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:
        pass
    return {"host": platform.node(), "os": platform.platform(), "cpu": cpu, "cores": cores, "ram_gb": ram_gb,
            "gpu": gpu}


def bold_sentences(text: str) -> list[str]:
    """The **bold** passages of a table note: where suites state a shortfall in their notes."""
    parts = text.split("**")
    return [p.strip().rstrip(".") for p in parts[1::2] if p.strip()]


def speed_ratio_rows(results) -> list[list]:
    by_name = {r.name: r for r in results}
    rows = []
    for suite, key, label, target, ok in SPEED_RATIOS:
        r = by_name.get(suite)
        if r is None:
            continue
        if key.endswith("_L*"):
            lengths = [int(k[len(key) - 1:]) for k in r.metrics if k.startswith(key[:-1]) and k[len(key) - 1:].isdigit()]
            if not lengths:
                continue
            key, label = key[:-1] + str(max(lengths)), label.format(L=f"{max(lengths):,}")
        if key not in r.metrics:
            continue
        v = float(r.metrics[key])
        shown = f"{100 * v:.1f} %" if "share" in key else f"{v:.2f}"
        rows.append([label, shown, target, "met" if ok(v) else "NOT met"])
    return rows


def _table_lines(t) -> list[str]:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in t.rows]
    return lines + [""] + ([t.note, ""] if t.note else [])


def write_report(out: Path, results, argv: list[str], *, context: dict) -> None:
    """Write ``README.md`` and ``results.json`` in ``out``.

    ``context``: seed, quick, cohort (description), truth (from :func:`record_truth`), started (ISO time).
    """
    machine, versions = _machine(), _versions()
    truth = context.get("truth")
    lines = ["# phenoclip benchmark report", "",
             f"Generated by `{' '.join(argv)}` on {context.get('started', '')} (phenoclip {__version__}). "
             "Every number below was measured by that run; rerun the command to regenerate the whole folder.", "",
             "## How this report was made", "",
             f"- **Cohort:** {context.get('cohort', 'per suite (see each suite)')}",
             f"- **Seed:** {context.get('seed')}; **mode:** {'--quick (CPU-sized)' if context.get('quick') else 'full'}",
             "- **Held-out data:** every learning suite splits patients before any training; pretraining's own "
             "validation patients are the test patients wherever a suite fine-tunes or retrieves.",
             ("- **Cohort truth files** (everything planted in the simulated cohorts): "
              + ", ".join(f"[`{k}`]({k}) (sha256 `{v[:12]}…`)" for k, v in truth["all"].items())
              if truth else "- **Cohort truth file:** none (not a simulated cohort)"),
             f"- **Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GiB RAM, GPU: "
             f"{machine['gpu']}; {machine['os']}",
             "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
             "## Overview", "", "| suite | status | seconds | tables | figures |", "|---|---|---|---|---|"]
    for r in results:
        status = r.status if not r.error else f"{r.status}: {r.error}"
        lines.append(f"| [`{r.name}`](#suite-{r.name}) | {status} | {r.seconds:.0f} | {len(r.tables)} | "
                     f"{len(r.figures)} |")
    lines.append("")
    ratio_rows = speed_ratio_rows(results)
    if ratio_rows:
        lines += ["## Speed, as ratios against references measured in the same run", "",
                  "| measure | value | target | |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in ratio_rows] + [""]
    shortfalls = [(r.name, s) for r in results for s in getattr(r, "shortfalls", [])]
    shortfalls += [("speed", f"{row[0]}: {row[1]} (target {row[2]})") for row in ratio_rows if row[3] != "met"]
    if shortfalls:
        lines += ["## Where phenoclip falls short", ""]
        lines += [f"- **{name}:** {text}" for name, text in shortfalls] + [""]
    for r in results:
        lines += [f'<a id="suite-{r.name}"></a>', "", f"## Suite `{r.name}`: {r.status} ({r.seconds:.0f} s)", ""]
        if r.error:
            lines += [f"**Failed:** {r.error}", ""]
        for t in r.tables:
            lines += _table_lines(t)
        for fig in r.figures:
            lines += [f"![{fig}]({fig})", ""]
        if r.commands:
            lines += ["Commands behind these numbers:", "", "```"] + r.commands + ["```", ""]
    (out / "README.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({
        "phenoclip_version": __version__, "command": argv, "context": context, "machine": machine,
        "versions": versions, "suites": [asdict(r) for r in results]}, indent=2, default=str))


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
