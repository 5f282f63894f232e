"""The ``phenoclip`` entry point: builds the command tree and maps errors to exit codes."""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Optional

import typer

from phenoclip import __version__
from phenoclip.cli import (benchmark, common, doctor, explain, finetune, preprocess, pretrain, retrieve,
                           segment, simulate)
from phenoclip.cli.help import plain_help
from phenoclip.errors import EXIT_INTERNAL, EXIT_WRITE, PhenoclipError

app = typer.Typer(
    name="phenoclip",
    help="Multimodal self-supervised pretraining on patient data: germline variants (VCF, PLINK, BGEN), gene "
         "expression, 3D MRI (NIfTI), biosignals (ECG/PPG) and HPO phenotypes. Steps read and write "
         "HDF5 stores so they chain in shell scripts and batch jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)


def _version(value: bool) -> None:
    if value:
        print(f"phenoclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
    log: Optional[str] = typer.Option(None, "--log", metavar="FILE",
                                      help="Also write the run log to FILE (with --out -, the only copy)."),
) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and loads only what it needs
    from phenoclip import progress

    progress.QUIET = quiet
    common.LOG_FILE = log


def _register() -> None:
    app.command("simulate", help=simulate.HELP)(simulate.simulate)
    app.add_typer(preprocess.app, name="preprocess")
    app.command("pretrain", help=pretrain.HELP)(pretrain.pretrain)
    app.add_typer(retrieve.app, name="retrieve")
    app.add_typer(finetune.app, name="finetune")
    app.add_typer(explain.app, name="explain")
    app.add_typer(segment.app, name="segment")
    app.command("benchmark", help=benchmark.HELP)(benchmark.benchmark)
    app.command("doctor", help=doctor.HELP)(doctor.doctor)


_register()


def build_command():
    """The click command tree of the CLI, with plain 80-column help (see :mod:`phenoclip.cli.help`)."""
    root = typer.main.get_command(app)
    plain_help(root)
    return root


def _click_kind(exc: BaseException) -> str | None:
    """'exit', 'usage' or 'abort' for click's control-flow exceptions.

    Recent typer vendors its own copy of click, so the classes are matched by name along the
    MRO rather than imported from ``click``.
    """
    names = {c.__name__ for c in type(exc).__mro__}
    if "Exit" in names:
        return "exit"
    if "ClickException" in names:
        return "usage"
    if "Abort" in names:
        return "abort"
    return None


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; user errors print one line and exit with their code, bugs exit 70."""
    command = build_command()
    args = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("PHENOCLIP_DEBUG") not in (None, "", "0")
    try:
        # typer turns Ctrl-C inside a command into a *returned* 130 when not standalone
        code = command.main(args=args, prog_name="phenoclip", standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except PhenoclipError as e:
        if debug:
            raise
        # every torchrun worker raises a collective stop: each line names its rank (which one
        # was signalled shows), so the job log does not hold the same line twice
        rank = os.environ.get("RANK") if getattr(e, "collective", False) and os.environ.get("WORLD_SIZE", "1") != "1" \
            else None
        print(f"phenoclip: error{f' (rank {rank})' if rank else ''}: {e.line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("phenoclip: interrupted (Ctrl-C); no partial output kept (pretrain keeps its last whole "
              "checkpoint: continue it with --resume)", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:
        if e.errno not in _DISK_ERRNOS or debug:
            _internal(e, debug)
        # imported here, not at the top: `phenoclip --help` stays fast and loads only what it needs
        from phenoclip import staging

        # h5py names the file only inside its message
        where = e.filename or (re.search(r"filename = '([^']+)'", str(e)) or [None, None])[1] \
            or staging.current_output or "the output"
        staged = re.fullmatch(r"\.(.+)\.tmp-\d+.*", os.path.basename(str(where)))
        if staged:  # name the output, not its temporary file
            where = os.path.join(os.path.dirname(str(where)), staged.group(1))
        print(f"phenoclip: error: {where}: {os.strerror(e.errno)} while writing; nothing was kept "
              "(free space or choose another --out)", file=sys.stderr)
        # no finalisers: an HDF5 file whose write failed on a full disk crashes when closed at exit
        # (its temporary file is already removed, and the run log is only written on success)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_WRITE)
    except Exception as e:
        kind = _click_kind(e)
        if kind == "exit":
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if kind == "usage" and type(e).__name__ == "NoArgsIsHelpError":
            # 'phenoclip' or 'phenoclip preprocess' alone: the help, not an error line around it
            print(e.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        if kind == "usage":
            # one line, like every other error; click's block repeats the usage and a help hint
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "phenoclip"
            print(f"phenoclip: error: {e.format_message()} (see '{where} --help')",  # type: ignore[attr-defined]
                  file=sys.stderr)
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if kind == "abort":
            print("phenoclip: aborted", file=sys.stderr)
            sys.exit(130)
        _internal(e, debug)
    sys.exit(0)


#: errors of the disk, not of phenoclip: exit 6 like any other output that cannot be written
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _internal(e: BaseException, debug: bool) -> None:
    """A bug: say so in one line and point at the traceback switch."""
    if debug:
        raise e
    print(f"phenoclip: internal error: {type(e).__name__}: {e} "
          f"(rerun with PHENOCLIP_DEBUG=1 for the traceback and report it)", file=sys.stderr)
    sys.exit(EXIT_INTERNAL)
