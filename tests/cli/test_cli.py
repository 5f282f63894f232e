"""The CLI as users meet it: help, man pages in sync, no heavy imports at start-up, exit codes."""

import subprocess
import sys

from conftest import REPO, error_lines, run_cli
from phenoclip.cli.manpages import render_all

SUBCOMMANDS = ["simulate", "preprocess", "benchmark"]


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in proc.stdout
    proc = run_cli("preprocess", "--help")
    for form in ("variants", "expression", "mri", "signals", "phenotypes"):
        assert form in proc.stdout


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("phenoclip ")


def test_help_imports_nothing_heavy():
    """HPC scripts call the CLI many times: --help must not pull torch, monai, mamba_ssm, h5py, numpy."""
    code = ("import sys; from phenoclip.cli.main import main\n"
            "try:\n    main(['preprocess', 'variants', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'monai', 'mamba_ssm', 'h5py', 'numpy', 'cyvcf2', 'nibabel') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_man_pages_are_in_sync():
    pages = render_all()
    man = REPO / "man"
    on_disk = {p.name for p in man.glob("phenoclip*.1")}
    assert on_disk == set(pages), "man/ is stale: run `make man`"
    for name, text in pages.items():
        assert (man / name).read_text() == text, f"man/{name} is stale: run `make man`"
    assert "phenoclip-preprocess-variants.1" in pages and "phenoclip-simulate.1" in pages


def test_usage_error_exit_2():
    proc = run_cli("preprocess", "variants", "--out", "x.h5")  # --vcf missing
    assert proc.returncode == 2 and "--vcf" in proc.stderr
    proc = run_cli("preprocess", "expression", "--table", "x.tsv", "--out", "x.h5", "--transform", "zscore")
    assert proc.returncode in (2, 3)


def test_internal_error_exit_70_without_traceback(tmp_path):
    """A bug is not a user error: exit 70, one line, traceback only with PHENOCLIP_DEBUG=1."""
    code = ("import sys; from phenoclip.cli import main as m\n"
            "@m.app.command('boom')\ndef boom():\n    raise ZeroDivisionError('planted bug')\n"
            "m.main(['boom'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 70
    assert len(error_lines(proc)) == 1 and "internal error" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "PHENOCLIP_DEBUG": "1"})
    assert "Traceback" in proc.stderr
