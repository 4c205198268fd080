"""``python -m daemon``, but it kills itself with SIGKILL at one chosen point of a submit.

``CRASH_AT=before_submit``: the claim has committed, the job was never started.
``CRASH_AT=after_submit``: the job has started, nothing after it ran.
Used by the crash-safety tests; everything else is the real daemon process.
"""

from __future__ import annotations

import os
import signal
import sys

from daemon.__main__ import main
from daemon.local_backend import LocalBackend

_submit = LocalBackend.submit


def crashing_submit(self, task):
    if os.environ["CRASH_AT"] == "before_submit":
        os.kill(os.getpid(), signal.SIGKILL)
    _submit(self, task)
    os.kill(os.getpid(), signal.SIGKILL)


LocalBackend.submit = crashing_submit

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
