"""Copy stdin to stdout at most RATE MiB/s: a slow snapshot target.

``exec:python -m avocado_bgsnap.throttle_filter 32 > FILE`` makes a save of
a small guest last long enough for the actions of ``bgsnap_during`` to
happen while the RAM streams (a background snapshot ignores QEMU's own
``max-bandwidth``; its writes block on the pipe instead).
"""

import sys
import time

CHUNK = 256 * 1024


def throttle(src, dst, rate_bytes_s: float) -> int:
    """Copy ``src`` to ``dst`` no faster than ``rate_bytes_s``; return the bytes."""
    started, total = time.monotonic(), 0
    while True:
        data = src.read(CHUNK)
        if not data:
            return total
        dst.write(data)
        total += len(data)
        ahead = total / rate_bytes_s - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].replace(".", "", 1).isdigit() or float(argv[1]) <= 0:
        print("usage: python -m avocado_bgsnap.throttle_filter MIB_PER_S", file=sys.stderr)
        return 2
    throttle(sys.stdin.buffer, sys.stdout.buffer, float(argv[1]) * 2**20)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
