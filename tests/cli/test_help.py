"""Every help page reads well at 80 columns; ``phenoclip doctor`` reports the installation (issue 20)."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli
from phenoclip.cli.help import PIPELINE
from phenoclip.cli.main import build_command


def _paths(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _paths(sub, path + (name,))


def _help(root, path, capsys) -> str:
    assert root.main(args=[*path, "--help"], prog_name="phenoclip", standalone_mode=False) in (0, None)
    return capsys.readouterr().out


def test_every_help_page_fits_80_columns_with_defaults_and_whole_words(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    root = build_command()
    pages = 0
    for path, cmd in _paths(root):
        text = _help(root, path, capsys)
        where = " ".join(("phenoclip",) + path)
        assert text.startswith(f"Usage: {where}"), where
        for line in text.splitlines():
            assert len(line) <= 80, f"{where}: {line!r}"
            # a word or option name cut at the end of a line ('--val-' / 'fraction')
            assert not re.search(r"[A-Za-z0-9]-$", line), f"{where}: {line!r}"
        # rich used to read '[default: 100]' as markup and drop it, leaving 'Epochs .'
        assert not re.search(r" \.(\s|$)", text) and "<list[" not in text and "range>" not in text, where
        options = text.split("\nOptions:\n", 1)[-1]
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and param.required:
                entry = re.search(rf"^  {re.escape(param.opts[0])} .*?(?=^  -|\Z)", options, flags=re.M | re.S)
                assert entry and "[required]" in entry.group(0), f"{where} {param.opts}"
        pages += 1
    assert pages >= 19
    pretrain = _help(root, ("pretrain",), capsys)
    assert re.search(r"--epochs N\s+Epochs \[default: 100\]", pretrain)
    assert re.search(r"--out PATH\s+Checkpoint directory \(runs/NAME\)\.\s+\[required\]", pretrain)


def test_top_level_commands_in_pipeline_order_one_line_each(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(build_command(), (), capsys)
    listed = re.findall(r"^  ([a-z]+)\s{2,}(.+)$", text.split("Commands:")[1], flags=re.M)
    assert [name for name, _ in listed] == list(PIPELINE)
    assert all(summary == PIPELINE[name] for name, summary in listed)


@pytest.mark.parametrize("tool", ["bcftools", "plink2"])
def test_doctor_reports_versions_torch_and_tools(tool):
    import shutil

    import torch

    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    rows = {k: v.strip() for k, v in rows.items()}
    assert rows["torch"] == torch.__version__
    assert rows["torch build"].startswith(torch.__version__)
    assert ("GPU" in rows) != torch.cuda.is_available() or "GPU 0" in rows
    assert rows["mamba-ssm kernel"]
    found = shutil.which(tool)
    assert (rows[tool] == "not found") == (found is None)
    if found:
        assert found in rows[tool]


def test_no_arguments_prints_the_help_not_an_error():
    for args in ((), ("preprocess",)):
        proc = run_cli(*args)
        assert proc.returncode == 0 and proc.stdout.startswith(f"Usage: {' '.join(('phenoclip',) + args)}")
        assert "error" not in proc.stdout + proc.stderr
    # a group's commands get whole one-line summaries, not a first sentence cut at 45 characters
    listed = dict(re.findall(r"^  ([a-z]+)\s{2,}(.+)$", run_cli("preprocess").stdout.split("Commands:")[1],
                             flags=re.M))
    assert listed["variants"] == "VCF/BCF, PLINK 1/2 or BGEN -> genotype store" and not any(v.endswith("...") for v in listed.values())
