"""The `cls` command. Each subcommand lives in its own module and only calls into the library."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> module with add_parser(subparsers, name); modules import heavy dependencies inside run().
SUBCOMMANDS = {
    "model-info": "cls.cli.model_info",
    "data": "cls.cli.data",
    "augment": "cls.cli.augment",
    "stylize": "cls.cli.stylize",
    "train": "cls.cli.train",
    "gradcam": "cls.cli.gradcam",
    "sweep": "cls.cli.sweep",
    "results": "cls.cli.results",
    "compare": "cls.cli.compare",
    "report": "cls.cli.report",
    "export": "cls.cli.export",
    "submit": "cls.cli.submit",
    "status": "cls.cli.status",
}


_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    from cls.results.store import StoreWarning

    if issubclass(category, StoreWarning):  # they name the file at fault; where in cls they came from is noise
        return f"cls: warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = argparse.ArgumentParser(prog="cls", description="Batch image-classification experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module).add_parser(sub, name)
    # Overrides (key=value) may come before or after options; argparse only takes positionals in one run.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # Bad input is the user's to fix: the message says how; a traceback would bury it.
        print(f"cls {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the system said no: which file, and why
        where = f": {e.filename}" if e.filename else ""
        print(f"cls {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cls {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is ours
        import traceback

        traceback.print_exc()
        print(f"cls {args.command}: this is a bug in cls (the traceback above says where); please report it with "
              f"the command you ran", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
