"""Faults around a step: full disks, two writers on one output, unwritable or impossible outputs,
temporary files of killed runs. Each through the real entry point; kills inside a checkpoint save
and Ctrl-C are in test_pretrain.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import error_lines, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VCF = os.path.join(REPO, "data", "sample", "variants.vcf.gz")


def _mount_tmpfs(path, size: str, *options: str) -> bool:
    path.mkdir()
    opts = ",".join((f"size={size}", *options))
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and a kernel that lets this container mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "2m"):
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk, leave_kib: int) -> None:
    """Fill the disk until about ``leave_kib`` KiB are left."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_kib * 1024))


@pytest.fixture
def test_disk_floor(monkeypatch):
    """The 2 MiB test disk is under the 1 MiB floor once half full: lower the floor for the child
    processes through the environment variable that overrides it."""
    monkeypatch.setenv("PHENOCLIP_MIN_FREE_KIB", "16")


@pytest.mark.parametrize("leave_kib", [60, 300])
def test_full_disk_while_writing_a_store_exits_6_and_keeps_nothing(small_disk, test_disk_floor, leave_kib):
    """The genotype store of the sample cohort needs ~600 KiB: the disk fills at different points of
    the write (HDF5's data, its metadata at close). Was a segfault (139) with the temporary store
    left behind."""
    _fill(small_disk, leave_kib)
    proc = run_cli("preprocess", "variants", "--vcf", VCF, "--out", small_disk / "gene.h5")
    assert proc.returncode == 6, proc.stderr
    [line] = error_lines(proc)
    assert str(small_disk / "gene.h5") in line and "No space left on device" in line
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_a_nearly_full_disk_is_refused_before_any_work(small_disk, test_disk_floor):
    _fill(small_disk, 8)
    proc = run_cli("preprocess", "variants", "--vcf", VCF, "--out", small_disk / "gene.h5")
    assert proc.returncode == 6
    [line] = error_lines(proc)
    assert "KiB free on the output's file system" in line and "reading" not in proc.stderr
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_full_disk_at_the_first_checkpoint_exits_6_and_keeps_nothing(small_disk, test_disk_floor, small_cohort):
    _fill(small_disk, 400)   # one checkpoint of this model is ~5 MB
    out = small_disk / "pre"
    proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data",
                   small_cohort["expr"], "--arch", "gene=mlp", "--arch", "expr=mlp", "--epochs", "1",
                   "--batch-size", "16", "--out", out)
    assert proc.returncode == 6, proc.stderr
    assert str(out) in error_lines(proc)[-1] and "No space left on device" in error_lines(proc)[-1]
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_read_only_output_is_refused_before_any_work(tmp_path, small_cohort):
    ro = tmp_path / "ro"
    if os.geteuid() != 0 or not _mount_tmpfs(ro, "1m", "ro"):
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        t0 = time.monotonic()
        proc = run_cli("pretrain", "--modalities", "gene,expr", "--data", small_cohort["gene"], "--data",
                       small_cohort["expr"], "--epochs", "50", "--out", ro / "pre")
        assert proc.returncode == 6 and "not writable (read-only file system)" in proc.stderr
        assert "epoch" not in proc.stderr and len(error_lines(proc)) == 1
        assert time.monotonic() - t0 < 60   # no epoch was trained first
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_output_behind_a_missing_folder_is_refused_before_any_work(tmp_path):
    """``a/missing/../b.h5``: os.path.abspath says ``a/b.h5``, the OS cannot resolve ``missing``."""
    (tmp_path / "a").mkdir()
    proc = run_cli("preprocess", "variants", "--vcf", VCF, "--out", f"{tmp_path}/a/missing/../gene.h5")
    assert proc.returncode == 6 and "output folder does not exist" in proc.stderr and "reading" not in proc.stderr
    assert os.listdir(tmp_path / "a") == []


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_temporary_files_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".gene.h5.tmp-{dead}"
    stale.write_bytes(b"half a store")
    live = tmp_path / f".gene.h5.tmp-{alive}"
    live.write_bytes(b"another run's store, still being written")
    other = tmp_path / f".expr.h5.tmp-{dead}"
    other.write_bytes(b"not this output's")
    proc = run_cli("preprocess", "variants", "--vcf", VCF, "--out", tmp_path / "gene.h5")
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and live.exists() and other.exists()


def test_a_second_writer_to_the_same_output_is_refused(tmp_path, small_cohort):
    out = tmp_path / "pre"
    argv = [sys.executable, "-m", "phenoclip", "pretrain", "--modalities", "gene,expr", "--data",
            str(small_cohort["gene"]), "--data", str(small_cohort["expr"]), "--arch", "gene=mlp", "--arch",
            "expr=mlp", "--epochs", "400", "--batch-size", "16", "--out", str(out)]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stderr:
            if line.startswith("epoch 1/"):
                break
        second = run_cli(*argv[3:])
        assert second.returncode == 6, second.stderr
        [line] = error_lines(second)
        assert f"another phenoclip run (pid {first.pid}) is writing this output" in line
    finally:
        first.send_signal(signal.SIGTERM)   # the preemption signal: saves and exits 75
        first.communicate(timeout=120)
    assert first.returncode == 75
    assert not (tmp_path / ".pre.lock").exists()   # the lock went with the run
