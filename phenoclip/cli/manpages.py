"""Generate roff man pages from the CLI itself: ``python -m phenoclip.cli.manpages man/``.

One page for ``phenoclip`` and one per (sub)command, named ``phenoclip-preprocess-variants.1``
and so on. ``tests/cli/test_cli.py`` regenerates them in memory and fails when ``man/`` is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from phenoclip import __version__
from phenoclip.cli.main import build_command

EXIT_STATUS = [
    ("0", "success"),
    ("2", "bad command line"),
    ("3", "an input is missing or unreadable"),
    ("4", "an input is malformed"),
    ("5", "inputs are inconsistent with each other (samples, shapes, schema)"),
    ("6", "an output could not be written"),
    ("70", "internal error (a bug: rerun with PHENOCLIP_DEBUG=1 and report the traceback)"),
]


def _esc(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _option_line(param, ctx) -> tuple[str, str]:
    """(names, help) exactly as ``--help`` shows them, defaults and [required] included."""
    record = param.get_help_record(ctx)
    if record is None:
        return param.human_readable_name, ""
    return record[0], record[1]


def _is_group(cmd) -> bool:
    # typer vendors click: recognise groups by interface, not by class
    return hasattr(cmd, "commands")


def _page(path: list[str], cmd) -> str:
    name = "-".join(path)
    summary = (cmd.help or cmd.short_help or "").strip().split("\n")[0]
    lines = [
        f'.TH {name.upper()} 1 "" "phenoclip {__version__}" "phenoclip manual"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(summary.rstrip('.'))}",
        ".SH SYNOPSIS",
        f".B {_esc(' '.join(path))}",
    ]
    if _is_group(cmd) and getattr(cmd, "invoke_without_command", False):
        lines.append("[OPTIONS] | COMMAND [OPTIONS]")  # a group that also runs on its own (finetune)
    elif _is_group(cmd):
        lines.append("COMMAND [OPTIONS]")
    else:
        lines.append("[OPTIONS]")
    lines += [".SH DESCRIPTION", _esc((cmd.help or "").strip())]
    if _is_group(cmd):
        lines.append(".SH COMMANDS")
        for sub_name, sub in sorted(cmd.commands.items()):
            lines += [".TP", f".B {_esc(sub_name)}", _esc((sub.help or "").strip().split("\n")[0]),
                      f"See \\fB{_esc('-'.join(path + [sub_name]))}\\fR(1)."]
    ctx = typer.Context(cmd, info_name=path[-1])
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    if params:
        lines.append(".SH OPTIONS")
        for p in params:
            names, help_text = _option_line(p, ctx)
            lines += [".TP", f".B {_esc(names)}", _esc(help_text.strip())]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f".B {code}", _esc(meaning)]
    lines += [".SH SEE ALSO", "\\fBphenoclip\\fR(1); README.md of the phenoclip repository."]
    return "\n".join(lines) + "\n"


def render_all() -> dict[str, str]:
    """File name -> page text for the whole command tree."""
    root = build_command()
    pages: dict[str, str] = {}

    def walk(path: list[str], cmd) -> None:
        pages["-".join(path) + ".1"] = _page(path, cmd)
        if _is_group(cmd):
            for sub_name, sub in cmd.commands.items():
                walk(path + [sub_name], sub)

    walk(["phenoclip"], root)
    return pages


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["man"])[0])
    out.mkdir(parents=True, exist_ok=True)
    pages = render_all()
    for stale in out.glob("phenoclip*.1"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        (out / name).write_text(text)
    print(f"wrote {len(pages)} man pages to {out}/", file=sys.stderr)


if __name__ == "__main__":
    main()
