"""The shared machine's CPU convention for benchmark scripts: work under the shared lock, time alone.

`CpuLock` holds /tmp/slimkit-cpu.lock shared for the whole run; `timing()` makes a phase exclusive: with
SLIMKIT_QUIET=/path/to/quiet.sh set, a child `quiet.sh` pauses the other engineers' jobs for that phase only
(the script itself is the child's parent, so it is not paused); otherwise the lock is taken exclusive.
Keep each timing phase short (< 3 minutes).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = "/tmp/slimkit-cpu.lock"
_WAIT = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"


class CpuLock:
    def __init__(self, path: str = LOCK) -> None:
        self.fd = open(path, "a+")
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    @contextmanager
    def timing(self, label: str = "") -> Iterator[None]:
        quiet = os.environ.get("SLIMKIT_QUIET")
        start = time.time()
        if quiet:
            with tempfile.TemporaryDirectory() as tmp:
                done = Path(tmp) / "done"
                proc = subprocess.Popen([quiet, sys.executable, "-c", _WAIT, str(done)], stderr=subprocess.PIPE,
                                        text=True)
                for line in proc.stderr:  # quiet.sh says "paused" once the others are stopped
                    if "paused" in line:
                        break
                try:
                    yield
                finally:
                    done.touch()
                    proc.wait()
        else:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_SH)
        print(f"timing phase {label}: {time.time() - start:.0f}s alone", flush=True)
