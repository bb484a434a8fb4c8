"""preflight: check params.yaml and the local inputs before DVC reads anything.

`make run` runs it before `dvc repro`, and the Prefect flow before its first stage, because some bad input
costs more once DVC has started: a named pipe (FIFO), socket or device under `ingest.inputs_dir` makes
`dvc status` and `dvc repro` hang while hashing it, and a dangling symlink makes them fail with a traceback.
Here every params key is validated at once and the inputs are walked without reading them: one line, exit 2
(params) or 1 (data). The same checks are DVC's first stage (`tasks/preflight.py`), so that `dvc repro` and
`dvc exp run -S key=value` stop on a bad value before a later stage deletes its outputs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli.stage import DEBUG_ENV, error_line, parser_for, setup_logging
from config.params import PARAMS_FILE, Params, load_params
from runtime.errors import UserError

log = logging.getLogger(__name__)


def check_inputs(params: Params) -> None:
    """Raise DataError naming the first special file under `ingest.inputs_dir` or the chosen modality's local
    sources (params are valid already: `params` was loaded)."""
    from dataprep.sources import check_local_sources, local_source_paths

    sources = getattr(params.ingest, params.model.modality.sources_field)
    paths = [params.ingest.inputs_dir, *local_source_paths(sources, params.root)]
    check_local_sources([p for p in dict.fromkeys(paths) if p.exists() or p.is_symlink()], params.root)


def main(argv: list[str] | None = None) -> None:
    parser = parser_for("python -m cli.preflight", __doc__)
    parser.add_argument("--params", default=PARAMS_FILE, metavar="PATH", help="the params file (default: params.yaml here)")
    args: argparse.Namespace = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        check_inputs(load_params(args.params))
    except UserError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(error_line("preflight", exc, args.params))
        sys.exit(exc.exit_code)
    log.info("preflight: params and inputs look fine")


if __name__ == "__main__":
    main()
