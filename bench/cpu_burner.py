"""Keep CPU cores busy, to run a timing-sensitive test the way a loaded machine runs it.

    python bench/cpu_burner.py --procs 2 --seconds 60                 # burn 2 cores for 60 s
    python bench/cpu_burner.py --procs 2 --repeat 20 -- CMD [ARG...]  # run CMD 20 times in a row
                                                                      # while 2 cores burn

With a command, the burners run until the last run has finished; one line per run (exit status,
seconds) goes to stderr, and a JSON summary `{"runs", "passed", "failed"}` to stdout. The exit
status is 0 only if every run passed. It measures nothing itself: it is the load under which a
result must still hold. The soak (pipeline/README.md, docs/reliability.md) is the Redis restart
test 20 times in a row, in one pytest session (PIPELINE_SOAK repeats it; the tiny models are
trained once) or in 20 fresh sessions (--repeat 20; each trains them again):

    PIPELINE_SOAK=20 python bench/cpu_burner.py --procs 2 -- \\
        python -m pytest -q tests/test_pipeline_queue.py::test_consumers_reconnect_when_redis_restarts
    python bench/cpu_burner.py --procs 2 --repeat 20 -- \\
        python -m pytest -x -q tests/test_pipeline_queue.py::test_consumers_reconnect_when_redis_restarts
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time


def burn(until: float) -> None:
    """Spin on integer arithmetic (no sleeping, no memory traffic) until time.monotonic() > until."""
    x = 1
    while time.monotonic() < until:
        for _ in range(10_000):
            x = (x * 48271) % 2147483647


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2, help="busy processes (one per core to keep busy)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to burn without a command")
    ap.add_argument("--repeat", type=int, default=1, help="run the command this many times in a row")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]: what to run under load")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    until = time.monotonic() + (args.seconds if not cmd else 7 * 24 * 3600)
    burners = [mp.Process(target=burn, args=(until,), daemon=True) for _ in range(args.procs)]
    for b in burners:
        b.start()
    try:
        if not cmd:
            for b in burners:
                b.join()
            return 0
        failed = []
        for run in range(1, args.repeat + 1):
            start = time.monotonic()
            rc = subprocess.run(cmd).returncode
            print(f"run {run}/{args.repeat}: exit {rc} in {time.monotonic() - start:.0f} s", file=sys.stderr,
                  flush=True)
            if rc != 0:
                failed.append(run)
        print(json.dumps({"runs": args.repeat, "passed": args.repeat - len(failed), "failed": failed,
                          "burners": args.procs, "command": cmd}))
        return 0 if not failed else 1
    finally:
        for b in burners:
            b.terminate()
            b.join()


if __name__ == "__main__":
    sys.exit(main())
