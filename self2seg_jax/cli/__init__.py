"""``self2seg`` command line: segment + denoise image files, or run the bundled demo.

* :mod:`~self2seg_jax.cli.parser` — flags (generated from :class:`Self2SegConfig`), TOML files;
* :mod:`~self2seg_jax.cli.run` — the commands, one function per step of a file's run;
* :mod:`~self2seg_jax.cli.report` — the per-file JSON report and the batch summary.

Problems with the input (missing, unreadable or unsupported files, bad shapes, NaN/Inf
pixels, constant images, boxes outside the image, an output folder that cannot be written,
...) are reported as one line on stderr, ``error: <file>: <problem>``, with exit code 2;
``--debug`` shows the traceback instead. In a batch, a bad file is reported and the others
are still processed. Outputs are written all-or-nothing per input, never over an input file,
and never over an existing file without ``--overwrite``. ``--help`` and ``--version`` never
import JAX.
"""

from __future__ import annotations

import json
import sys

from self2seg_jax.cli.parser import CLIError, build_parser, config_from_args

__all__ = ["CLIError", "build_parser", "config_from_args", "main"]


def main(argv=None) -> int:
    """Entry point of ``self2seg``; returns the exit code (``--help`` returns 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2, message printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from self2seg_jax.cli import run

    try:
        with run.export_cache_restored():
            return run.cmd_segment(args) if args.command == "segment" else run.cmd_demo(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return run.EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        code, msg = run.classify(e)
        run.error(args, msg)
        if args.json:
            print(json.dumps({"error": msg, "exit_code": code}), flush=True)
        return code
