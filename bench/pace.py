"""Writes the lines of a file to stdout at a given rate (lines/s), in 5 ms slots, for
`bridge -batch -` on the other end of the pipe. Rate 0: as fast as the pipe takes them.

  python -m bench.pace LINES_FILE RATE DURATION   ->  one JSON line on stderr: {"lines", "seconds"}

The file is cycled through until DURATION seconds have passed.
"""
from __future__ import annotations

import json
import sys
import time

SLOT = 0.005


def main(argv) -> int:
    path, rate, duration = argv[1], float(argv[2]), float(argv[3])
    with open(path) as fh:
        lines = fh.read().splitlines(True)
    out = sys.stdout
    n = len(lines)
    sent = 0
    t0 = time.monotonic()
    end = t0 + duration
    chunk = max(1, int(rate * SLOT)) if rate > 0 else 2000
    i = 0
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if rate > 0:
                due = int((now - t0) * rate)
                if sent >= due:
                    time.sleep(SLOT)
                    continue
                k = min(due - sent, chunk * 4)
            else:
                k = chunk
            buf = []
            for _ in range(k):
                buf.append(lines[i])
                i = i + 1 if i + 1 < n else 0
            out.write("".join(buf))
            out.flush()
            sent += k
    except BrokenPipeError:
        pass
    seconds = time.monotonic() - t0
    try:
        out.close()
    except BrokenPipeError:
        pass
    sys.stderr.write(json.dumps({"lines": sent, "seconds": seconds}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
