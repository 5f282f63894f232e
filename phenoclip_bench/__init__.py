"""The suites behind ``phenoclip benchmark``: each returns tables of figures measured in this run.

A suite is a function ``run(ctx) -> SuiteResult``; :data:`SUITE_MODULES` is the registry. A failing
suite is reported (reason in the report, non-zero exit) while the others still run.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from phenoclip_bench.report import now_iso, write_report
from phenoclip.errors import OutputError, PhenoclipError, UsageError


@dataclass
class BenchContext:
    out: Path
    cohort: Path | None
    patients: int | None
    variants: int | None
    quick: bool
    seed: int
    work: Path  # scratch folder inside out/
    device: str = "cpu"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""


@dataclass
class SuiteResult:
    name: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    status: str = "ok"
    error: str = ""
    seconds: float = 0.0
    #: one line each where phenoclip falls short of a baseline or a target (listed together in the report)
    shortfalls: list[str] = field(default_factory=list)


class SuiteFailed(PhenoclipError):
    """At least one benchmark suite failed (exit 70); the report says why."""

    exit_code = 70


#: suite name -> the modules whose ``run(ctx)`` it runs, in order (their results are merged into one)
SUITE_MODULES: dict[str, list[str]] = {
    "ingest": ["ingest"],
    "pretrain": ["pretrain_speed"],
    "ssl": ["ssl"],
    "retrieve": ["retrieve_quality", "retrieve_speed"],
    "classify": ["classify"],
    "baselines": ["baselines"],
    "ablation": ["ablation"],
    "segment": ["segment"],
    "explain": ["explain"],
}


def _merge(name: str, parts: list[SuiteResult]) -> SuiteResult:
    merged = SuiteResult(name=name)
    for module, p in zip(SUITE_MODULES[name], parts):
        merged.tables += p.tables
        merged.figures += p.figures
        merged.commands += p.commands
        merged.shortfalls += p.shortfalls
        # prefixed: two modules may both measure, say, "seconds"
        merged.metrics.update({f"{module}/{k}": v for k, v in p.metrics.items()})
    return merged


def _run_suite(name: str, ctx: BenchContext) -> SuiteResult:
    """Import the suite's modules only now: a suite's heavy imports must not slow or break the others."""
    parts = [importlib.import_module(f"phenoclip_bench.{m}").run(ctx) for m in SUITE_MODULES[name]]
    return parts[0] if len(parts) == 1 else _merge(name, parts)


def run_suites(suite: str, out: Path, *, cohort: Path | None, patients: int | None, variants: int | None,
               quick: bool, seed: int, device: str = "cpu", keep_work: bool = False, log=None) -> list[SuiteResult]:
    """Run one suite, a comma-separated list or ``all``; write the report; raise :class:`SuiteFailed` if any failed.

    Scratch files (simulated cohorts, stores, checkpoints) go to ``out/work/`` and are removed at
    the end unless ``keep_work``; the cohorts' truth files are copied into ``out/truth/`` first.
    """
    names = list(SUITE_MODULES) if suite == "all" else [s.strip() for s in suite.split(",")]
    unknown = [n for n in names if n not in SUITE_MODULES]
    if unknown:
        raise UsageError(f"unknown suite '{unknown[0]}': available {', '.join(SUITE_MODULES)} or all")
    # imported here, not at the top: `phenoclip benchmark` imports this package before --threads caps the
    # BLAS/OpenMP pools, which numpy and torch size when they load (devices pulls torch)
    from phenoclip.ops.devices import resolve_device

    device = resolve_device(device)  # before any suite: 'cuda' on a machine without one is one line
    # imported here, not at the top: real_data pulls numpy (see above)
    from phenoclip_bench.real_data import DATASETS

    if cohort is not None and str(cohort) not in DATASETS:
        # imported here, not at the top: cohort pulls numpy and torch (see above) and imports BenchContext
        # from this package (a circle at import time)
        from phenoclip_bench.cohort import check_cohort

        check_cohort(Path(cohort))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the report folder ({e.strerror})", out) from None
    ctx = BenchContext(out=out, cohort=cohort, patients=patients, variants=variants, quick=quick, seed=seed,
                       work=out / "work", device=device)
    ctx.work.mkdir(exist_ok=True)
    started = now_iso()
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            result = _run_suite(name, ctx)
        except Exception as e:  # one suite's failure must not hide the others' figures
            result = SuiteResult(name=name, status="failed", error=f"{type(e).__name__}: {e}")
            if os.environ.get("PHENOCLIP_DEBUG"):
                traceback.print_exc()
        result.name = name
        result.seconds = time.perf_counter() - t0
        results.append(result)
        if log is not None:
            log.note(f"suite {name}: {result.status} in {result.seconds:.1f} s {result.error}")
    context = {"seed": seed, "quick": quick, "started": started, "suites": names, "device": device,
               "cohort": f"{cohort} (--cohort)" if cohort else
               f"simulated in this run ({patients or 'default'} patients, seed {seed}; sizes per suite)",
               "truth": _record_truths(ctx)}
    write_report(out, results, ["phenoclip", *sys.argv[1:]], context=context)
    if not keep_work:
        shutil.rmtree(ctx.work, ignore_errors=True)
    failed = [r.name for r in results if r.status != "ok"]
    if failed:
        raise SuiteFailed(f"suite(s) {', '.join(failed)} failed; see the report", out / "README.md")
    return results


def _record_truths(ctx: BenchContext) -> dict | None:
    """Copy every truth file of the cohorts used (--cohort's, or those simulated under work/) into out/truth/."""
    found = []
    if ctx.cohort is not None and (Path(ctx.cohort) / "truth.json").exists():
        found.append(("cohort", Path(ctx.cohort) / "truth.json"))
    for path in sorted(ctx.work.rglob("truth.json")):
        found.append((str(path.parent.relative_to(ctx.work)).replace("/", "_"), path))
    if not found:
        return None
    (ctx.out / "truth").mkdir(exist_ok=True)
    copies = {}
    for label, path in found:
        data = path.read_bytes()
        (ctx.out / "truth" / f"{label}.json").write_bytes(data)
        copies[f"truth/{label}.json"] = hashlib.sha256(data).hexdigest()
    first = next(iter(copies))
    return {"source": str(found[0][1]), "copy": first, "sha256": copies[first], "all": copies}
