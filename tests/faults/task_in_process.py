"""Runs one training task in this process, as a worker's pool process would (`python -m
tests.faults.task_in_process RUN_ID`), with SIGXFSZ ignored: a file-size limit put on the process
(resource.prlimit, from the test) then makes a write fail with EFBIG, the way a full disk makes it
fail with ENOSPC, instead of killing the process."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from workers.tasks import train_run

    result = train_run.apply(args=[int(sys.argv[1])], task_id="faults-disk-full")
    print(f"task result: {result.result}", flush=True)


if __name__ == "__main__":
    main()
