"""Copy stdin to stdout, flipping one byte inside the first workload page.

The negative control of the transport layer: a save pipeline
``exec:python -m avocado_bgsnap.flip_filter > FILE`` damages the stream in
transit; the verifier must catch it.  The byte is 512 bytes into the first
4 KiB page that starts with the workload's page magic (a body word, so the
page header still identifies the page).
"""

import struct
import sys

from avocado_bgsnap.verifier import PAGE_MAGIC

NEEDLE = struct.pack("<Q", PAGE_MAGIC)
OFFSET = 512
CHUNK = 1 << 20


def flip_stream(src, dst) -> int | None:
    """Return the stream offset flipped, or None if no page was seen."""
    pending = b""          # bytes not written yet
    base = 0               # stream offset of pending[0]
    flipped = None
    while True:
        data = src.read(CHUNK)
        pending += data
        hold = 0           # how many trailing bytes must wait for more input
        if flipped is None and data:
            pos = pending.find(NEEDLE)
            if pos < 0:
                hold = len(NEEDLE) - 1          # a needle may straddle reads
            elif len(pending) <= pos + OFFSET:
                hold = len(pending) - pos       # wait for the page body
        if flipped is None:
            pos = pending.find(NEEDLE)
            if 0 <= pos and pos + OFFSET < len(pending):
                buf = bytearray(pending)
                buf[pos + OFFSET] ^= 0xFF
                pending, flipped, hold = bytes(buf), base + pos + OFFSET, 0
        cut = max(0, len(pending) - hold)
        dst.write(pending[:cut])
        base += cut
        pending = pending[cut:]
        if not data:
            return flipped


def main() -> int:
    flipped = flip_stream(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    print(f"flip_filter: flipped stream byte {flipped}" if flipped is not None
          else "flip_filter: no workload page seen, nothing flipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
