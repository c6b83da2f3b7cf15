"""Set up the Python environment, then start the app (as `python launch.py` does in A1111).

Flags are parsed here exactly as `webui.py` parses them, so `--help` and a mistyped flag behave
the same before anything is installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from modules.app import cmd_args
from modules.app import launch_utils


def main(argv: Sequence[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before any library that could reach a hub is imported (by the checks or by the app).
    launch_utils.set_offline_environment(os.environ)
    args = cmd_args.parse_args(argv)
    if not args.skip_prepare_environment:
        launch_utils.prepare_environment(args)

    import webui

    return webui.main(argv)


if __name__ == "__main__":
    sys.exit(main())
