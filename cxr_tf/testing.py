"""Test-only seams: the one place where the test suite reaches into a running command.

Both do nothing unless a test turns them on; `tests/test_layout.py` checks that no other
module reads a test-only environment variable or ends the process from inside.

- `CXR_TF_CHECK_ARGS=1`: a command stops once its arguments parsed and validated (the
  README test checks every documented command this way, without running it).
- Fault points, for the kill/resume tests of training: `fault_point(epoch, step)` marks
  each step boundary of the epoch-end writes (`cxr_tf.training.checkpoint`). A test in the
  same process sets `FAULT_HOOK`, called as `FAULT_HOOK(epoch, step)`; a test running
  training in a subprocess sets `CXR_TF_FAULT_AT="EPOCH:STEP"`, which ends the process
  there (`os._exit`, like a kill: no cleanup, no flush).
"""

from __future__ import annotations

import os
from collections.abc import Callable

CHECK_ARGS = "CXR_TF_CHECK_ARGS"
FAULT_AT = "CXR_TF_FAULT_AT"
# Exit status of a process stopped at a fault point.
FAULT_EXIT = 75

FAULT_HOOK: Callable[[int, str], None] | None = None


def checking_args() -> bool:
    """True when a command should stop once its arguments are checked."""
    return bool(os.environ.get(CHECK_ARGS))


def fault_point(epoch: int, step: str) -> None:
    """Lets a test stop the process between two writes (no-op otherwise)."""
    if FAULT_HOOK is not None:
        FAULT_HOOK(epoch, step)
    if os.environ.get(FAULT_AT) == f"{epoch}:{step}":
        os._exit(FAULT_EXIT)
