"""The `genpipe` command: every entry point behind one name (installed by `pip install -e .`, which `make setup` does).

    genpipe <stage> [--params PATH]        one stage, as `dvc repro` runs it (ingest, clean, ..., register)
    genpipe flow [--params PATH]           the pipeline as a Prefect flow
    genpipe sweep PARAM_SETS [--params]    param sets as DVC experiments; the best becomes challenger
    genpipe deploy [--params] [--pool]     the Prefect deployments
    genpipe deps [--write]                 check (or rewrite) dvc.yaml's code deps against the stages' imports
"""

from __future__ import annotations

import importlib
import sys

from config.params import STAGES

COMMANDS = {"flow": "flows.pipeline", "sweep": "flows.experiments", "deploy": "flows.deploy", "deps": "runtime.closure"}


def main(argv: list[str] | None = None) -> None:
    """Dispatch `genpipe <command> ...` to the entry point of that command."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__.strip() + "\n")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        from cli.stage import main as stage_main

        stage_main(getattr(importlib.import_module(f"tasks.{command}"), command), rest)
    elif command in COMMANDS:
        importlib.import_module(COMMANDS[command]).main(rest)
    else:
        sys.stderr.write(f"error: genpipe: unknown command {command!r}; allowed: {', '.join([*STAGES, *COMMANDS])}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
