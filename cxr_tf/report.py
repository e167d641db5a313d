"""`python -m cxr_tf.report --screenshot PAGE.html OUT.png`: an HTML report (`report.html`,
`localization.html`, `internal_vs_external.html`) rendered to a PNG with headless Chromium,
as `docs/report.png` is made."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from cxr_tf.cli import Parser, exit_if_checking, run_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m cxr_tf.report", description=__doc__)
    parser.add_argument("--screenshot", nargs=2, metavar=("PAGE", "PNG"), required=True,
                        help="the HTML page to render and the PNG to write")  # fmt: skip
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels")
    parser.add_argument("--height", type=int, default=2000, help="window (and PNG) height")
    parser.add_argument("--chromium", default=None,
                        help="the Chromium executable (default: chromium on PATH)")  # fmt: skip
    args = parser.parse_args(argv)
    exit_if_checking(parser)
    from cxr_tf.evaluation import html

    try:
        path = html.screenshot(*args.screenshot, width=args.width, height=args.height,
                               chromium=args.chromium)  # fmt: skip
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    run_command(main, "report")
