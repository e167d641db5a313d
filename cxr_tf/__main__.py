"""`python -m cxr_tf` (or the `cxr-tf` console script): the front door.

Without a command it lists the commands, one line each; `cxr-tf COMMAND ARGS...` runs
`python -m cxr_tf.COMMAND ARGS...` in this process (same flags, same exit codes). Only the
chosen command's module is imported, so the listing answers at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> what it does, in the order of the README's path through the package
COMMANDS: dict[str, str] = {
    "demo": "the whole job on synthetic data, on a CPU, in minutes",
    "synth": "write a synthetic dataset folder (NIH-like, or another source's layout)",
    "convert": "a dataset folder (a public release, or your own images) -> TFRecords",
    "explore": "statistics and plots of a dataset before training",
    "fit": "train a classifier on a converted dataset (resumable)",
    "tune": "Keras Tuner search over the training configuration",
    "evaluate": "a trained run on one split -> metrics, thresholds, reports",
    "localize": "Grad-CAM localization of a run against expert boxes",
    "export": "a run -> a SavedModel for TF Serving",
    "predict": "findings per image file, from a run, a SavedModel or a server",
    "report": "an HTML report rendered to a PNG with headless Chromium",
    "bench": "benchmarks printed beside a baseline measured in the same run",
}
PROG = "cxr-tf"


def usage() -> str:
    """The command list `cxr-tf` prints."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS...]   ({PROG} COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {about}" for name, about in COMMANDS.items()]
    lines += ["", "also: python -m cxr_tf.COMMAND [ARGS...]"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `cxr-tf COMMAND ARGS...`; lists the commands without one or with -h (exit 0),
    or after an unknown one (exit 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"{usage()}\n\n{PROG}: error: unknown command {command!r}", file=sys.stderr)
        return 2
    try:  # Ctrl-C while TensorFlow is imported, before the command's own handling
        module = importlib.import_module(f"cxr_tf.{command}")
        sys.argv = [f"{PROG} {command}", *rest]
        result = module.main(rest)
    except KeyboardInterrupt:
        print(f"\n{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
