"""``--suite retrieve``: exact top-k search, ours (:func:`~phenoclip.eval.topk.topk_chunked`)
against faiss-cpu's flat inner-product index and a plain full-matrix ``torch.topk``.

The same random L2-normalised float32 vectors for all three (1,000,000 x 128 gallery, 200,000
with ``--quick``; 1,024 queries; k = 10), each method in its own Python process so that its
memory figure is its own, all with the same thread count (torch and faiss/OpenMP). Seconds are
the best of 3 searches after a small warm-up search; the rounds go to the methods in turn
(ours, faiss, full, ours, ...) so that a shift in the load of a shared machine touches all alike. ``extra peak MB`` is the process' peak
resident set during the searches minus its resident set before them (the peak is reset first
through ``/proc/self/clear_refs``), i.e. what the search needs beyond the data. faiss's
``index.add`` (a copy of the gallery into the index) is timed and sized separately. The full
matrix is ``Q x G`` float32; when that passes :data:`FULL_MAX_BYTES` the queries go in batches.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from phenoclip_bench import SuiteResult, Table
from phenoclip.progress import info

# torch and faiss are imported inside the functions, not here: each method's child process loads only
# its own library, so that its memory figure is its own (see the module docstring)

METHODS = ("ours", "faiss", "full")
LABELS = {"ours": "ours (topk_chunked)", "faiss": "faiss IndexFlatIP", "full": "torch full matrix + topk"}
#: the full-matrix method scores at most this many bytes of similarities at once
FULL_MAX_BYTES = 2 << 30
#: ours must be at least as fast as faiss (issue 19)
TARGET_RATIO = 1.0


def make_data(n_gallery: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(queries (Q, D), gallery (G, D)) float32, rows L2-normalised; built in blocks (no G x D temporaries)."""
    rng = np.random.default_rng(seed)
    gallery = np.empty((n_gallery, dim), dtype=np.float32)
    for a in range(0, n_gallery, 65536):
        block = rng.standard_normal((min(65536, n_gallery - a), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        gallery[a:a + len(block)] = block
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries, gallery


def full_batch(n_queries: int, n_gallery: int) -> int:
    """Queries per full-matrix batch so that ``batch x G`` float32 stays within :data:`FULL_MAX_BYTES`."""
    return max(1, min(n_queries, FULL_MAX_BYTES // (4 * n_gallery)))


class Searcher:
    """One method, prepared on a gallery; ``search(queries, k)`` -> (scores, indices) numpy."""

    def __init__(self, method: str, gallery: np.ndarray, threads: int = 0):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method, self.add_seconds = method, 0.0
        if method == "faiss":
            import faiss  # optional: faiss-cpu comes with the bench extra; this child's library only

            if threads:
                faiss.omp_set_num_threads(threads)
            t0 = time.perf_counter()
            self.index = faiss.IndexFlatIP(gallery.shape[1])
            self.index.add(gallery)
            self.add_seconds = time.perf_counter() - t0
        else:
            import torch  # this child's library only (faiss's child never loads it)

            if threads:
                torch.set_num_threads(threads)
            self.gallery = torch.from_numpy(gallery)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.method == "faiss":
            return self.index.search(queries, k)
        import torch  # this child's library only (faiss's child never loads it)

        q = torch.from_numpy(queries)
        if self.method == "ours":
            # pulls torch: this child's library only (faiss's child never loads it)
            from phenoclip.eval.topk import topk_chunked

            s, i = topk_chunked(q, self.gallery, k)
            return s.numpy(), i.numpy()
        step = full_batch(q.shape[0], self.gallery.shape[0])
        parts = [torch.topk(q[a:a + step] @ self.gallery.T, k, dim=1) for a in range(0, q.shape[0], step)]
        return torch.cat([p.values for p in parts]).numpy(), torch.cat([p.indices for p in parts]).numpy()


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(key))


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(method: str, n_gallery: int, n_queries: int, dim: int, k: int, seed: int, threads: int,
           out_npy: str) -> None:
    """Build the data, prepare, warm up, then search once per ``go`` line on stdin (a JSON line each).

    The parent sends the rounds to every method in turn, so a change in the machine's load
    during the benchmark touches every method alike. The last search's indices go to ``out_npy``.
    """
    if method == "faiss":  # the library's own load is not the index's memory
        import faiss  # noqa: F401
    else:
        import torch  # noqa: F401

        import phenoclip.eval.retrieval  # noqa: F401
    queries, gallery = make_data(n_gallery, n_queries, dim, seed)
    _reset_peak()
    before = _status_mb("VmRSS:")
    searcher = Searcher(method, gallery, threads)
    add_mb = _status_mb("VmHWM:") - before if method == "faiss" else 0.0
    searcher.search(queries[:16], k)  # thread pools and lazy initialisation
    print(json.dumps({"ready": True, "add_seconds": searcher.add_seconds, "add_mb": add_mb}), flush=True)
    idx = None
    for line in sys.stdin:
        if line.strip() != "go":
            break
        reset = _reset_peak()
        before = _status_mb("VmRSS:")
        t0, c0 = time.perf_counter(), time.process_time()
        _, idx = searcher.search(queries, k)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": _status_mb("VmHWM:") - before,
                          "peak_reset": reset}), flush=True)
    if idx is not None:
        np.save(out_npy, np.asarray(idx, dtype=np.int64))


def _reply(proc: subprocess.Popen, timeout: float, err_path: Path) -> dict:
    """The child's next JSON line, or ``{"error": ...}`` if it dies or stays silent for ``timeout`` s."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return {"error": f"stopped after {timeout:.0f} s"}
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        tail = (err_path.read_text(errors="replace").strip().splitlines() or ["?"])[-1]
        return {"error": f"failed: {tail}"}
    return json.loads(line)


def measure_methods(methods, n_gallery: int, n_queries: int, dim: int, k: int, work: Path, *, seed: int = 0,
                    repeats: int = 3, threads: int = 0, timeout: float = 900.0) -> dict[str, dict]:
    """Each method in its own child process, searched in interleaved rounds; per method the best
    round's ``seconds`` and ``cpu_seconds``, the largest ``peak_mb``, ``add_*`` and ``indices`` (Q, k)."""
    root = str(Path(__file__).resolve().parents[2])  # the child imports this phenoclip, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    procs, results, errs = {}, {}, {m: Path(work) / f"retrieve_{m}.err" for m in methods}
    try:
        for m in methods:  # one after the other: building the data is not what is measured
            code = (f"from phenoclip_bench.retrieve_speed import _child; _child({m!r}, {n_gallery}, {n_queries}, "
                    f"{dim}, {k}, {seed}, {threads}, {str(Path(work) / f'retrieve_{m}.npy')!r})")
            with open(errs[m], "w") as err:  # a file, not a pipe: a chatty child must never block on it
                procs[m] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            results[m] = _reply(procs[m], timeout, errs[m])
        for _ in range(repeats):
            for m in methods:
                if "error" in results[m]:
                    continue
                procs[m].stdin.write("go\n")
                procs[m].stdin.flush()
                r = _reply(procs[m], timeout, errs[m])
                if "error" in r:
                    results[m] = r
                    continue
                best = results[m]
                best["seconds"] = min(best.get("seconds", math.inf), r["seconds"])
                best["cpu_seconds"] = min(best.get("cpu_seconds", math.inf), r["cpu_seconds"])
                best["peak_mb"] = max(best.get("peak_mb", 0.0), r["peak_mb"])
        for m, proc in procs.items():
            proc.stdin.close()
            proc.wait(timeout=timeout)
            npy = Path(work) / f"retrieve_{m}.npy"
            if "error" not in results[m] and npy.exists():
                results[m]["indices"] = np.load(npy)
            if npy.exists():
                npy.unlink()
    finally:
        for e in errs.values():
            if e.exists():
                e.unlink()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of query rows whose top-k index lists are identical (same items, same order)."""
    return float((np.asarray(a) == np.asarray(b)).all(axis=1).mean())


def retrieve_benchmark(n_gallery: int, n_queries: int = 1024, dim: int = 128, k: int = 10, *, work: Path,
                       seed: int = 0, repeats: int = 3, threads: int = 0) -> tuple[list[list], dict]:
    """Rows ``[method, queries/s, seconds, CPU seconds, extra peak MB, same top-k as faiss, note]`` and metrics."""
    threads = threads or os.cpu_count() or 1
    res = measure_methods(METHODS, n_gallery, n_queries, dim, k, work, seed=seed, repeats=repeats, threads=threads)
    ref = res["faiss"].get("indices")
    rows, metrics = [], {"gallery": n_gallery, "queries": n_queries, "dim": dim, "k": k, "threads": threads,
                         "repeats": repeats}
    for m in METHODS:
        r = res[m]
        if "error" in r:
            rows.append([LABELS[m], "-", "-", "-", "-", "-", r["error"]])
            continue
        qps = n_queries / r["seconds"]
        same = agreement(r["indices"], ref) if ref is not None else None
        note = ""
        if m == "faiss":
            note = f"index.add: {r['add_seconds']:.2f} s, {r['add_mb']:.0f} MB (not in the search time)"
        elif m == "full":
            b = full_batch(n_queries, n_gallery)
            note = (f"{-(-n_queries // b)} query batches of {b} (Q x G would be "
                    f"{4 * n_queries * n_gallery / 2**30:.1f} GiB)" if b < n_queries
                    else f"one {n_queries} x {n_gallery} matrix ({4 * n_queries * n_gallery / 2**30:.2f} GiB)")
        rows.append([LABELS[m], round(qps, 1), round(r["seconds"], 3), round(r["cpu_seconds"], 2),
                     round(r["peak_mb"], 1),
                     "-" if same is None else f"{100 * same:.1f}%", note])
        metrics[f"{m}_queries_per_s"] = qps
        metrics[f"{m}_peak_mb"] = r["peak_mb"]
        metrics[f"{m}_cpu_seconds"] = r["cpu_seconds"]
        if same is not None:
            metrics[f"{m}_same_topk_as_faiss"] = same
        if m == "faiss":
            metrics["faiss_add_seconds"] = r["add_seconds"]
    if "ours_queries_per_s" in metrics and "faiss_queries_per_s" in metrics:
        metrics["ours_over_faiss"] = metrics["ours_queries_per_s"] / metrics["faiss_queries_per_s"]
        metrics["meets_target"] = metrics["ours_over_faiss"] >= TARGET_RATIO
    if "ours_cpu_seconds" in metrics and "faiss_cpu_seconds" in metrics:
        metrics["faiss_cpu_over_ours_cpu"] = metrics["faiss_cpu_seconds"] / metrics["ours_cpu_seconds"]
    if "ours_queries_per_s" in metrics and "full_queries_per_s" in metrics:
        metrics["ours_over_full"] = metrics["ours_queries_per_s"] / metrics["full_queries_per_s"]
    return rows, metrics


def run(ctx):
    """The ``retrieve`` benchmark suite."""
    n_gallery = 200_000 if ctx.quick else 1_000_000
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    info(f"retrieve: {n_gallery:,} x 128 gallery, 1,024 queries, k 10, {threads} threads; ours, faiss, full matrix")
    rows, metrics = retrieve_benchmark(n_gallery, work=ctx.work, seed=ctx.seed, threads=threads)
    if "ours_over_faiss" not in metrics:
        raise RuntimeError("a method failed: " + "; ".join(str(r[-1]) for r in rows if r[1] == "-"))
    ratio = metrics["ours_over_faiss"]
    # imported here, not at the top: it pulls torch, which this module's faiss child must not load
    from phenoclip.eval.topk_coarse import bf16_is_fast

    metrics["ours_bfloat16_screen"] = bf16_is_fast()
    screen = ("ours screens in bfloat16 and rescores in float32 where the screen passes (this CPU multiplies "
              "bfloat16 natively; where scores pack tighter than bfloat16 rounding it scans in float32 instead)"
              if metrics["ours_bfloat16_screen"] else
              "ours scans in float32 (this CPU has no native bfloat16 products, so no bfloat16 screen)")
    table = Table(
        title=f"Exact top-10 inner-product search: 1,024 queries against {n_gallery:,} x 128 float32 "
              f"({threads} threads for every method)",
        columns=["method", "queries/s", "seconds", "CPU seconds", "extra peak MB", "same top-k as faiss", "note"],
        rows=rows,
        note=(f"ours / faiss throughput: {ratio:.2f}x (target >= {TARGET_RATIO}x: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
              f"ours / full matrix: {metrics.get('ours_over_full', 0):.2f}x. {screen}. "
              "Best of 3 searches after a warm-up, in rounds alternating the methods (seconds: wall clock; CPU seconds: all threads, the steadier "
              "figure on a shared machine); each method in its own process; extra peak MB = peak resident "
              "set during the searches minus the resident set before them (gallery and index excluded)."))
    return SuiteResult(name="retrieve", tables=[table], metrics=metrics,
                       commands=["python -c 'from pathlib import Path; from phenoclip_bench.retrieve_speed import "
                                 f"retrieve_benchmark; print(retrieve_benchmark({n_gallery}, work=Path(\".\"), "
                                 f"threads={threads}))'"])
