"""Copy stdin to stdout, flipping one byte inside the workload's page 0.

The negative control of the transport layer: a save pipeline
``exec:python -m avocado_bgsnap.flip_filter NONCE > FILE`` damages the
stream in transit; the verifier must catch it.  The byte is 512 bytes into
the 4 KiB page whose header is this workload's page 0 (page magic, then
nonce ^ 0), a body word, so the header still identifies the page.

The nonce matters: the page magic alone is also in the workload binary's
code (an immediate operand), and a page-cache copy of it at a lower guest
address got the flip instead of a workload page, so the damaged snapshot
passed verification.
"""

import sys

from avocado_bgsnap.verifier import page_header

OFFSET = 512
CHUNK = 1 << 20


def flip_stream(src, dst, nonce: int) -> int | None:
    """Return the stream offset flipped, or None if page 0 was not seen."""
    mark = page_header(nonce)
    pending = b""          # bytes not written yet
    base = 0               # stream offset of pending[0]
    flipped = None
    while True:
        data = src.read(CHUNK)
        pending += data
        hold = 0           # how many trailing bytes must wait for more input
        if flipped is None and data:
            pos = pending.find(mark)
            if pos < 0:
                hold = len(mark) - 1          # a needle may straddle reads
            elif len(pending) <= pos + OFFSET:
                hold = len(pending) - pos       # wait for the page body
        if flipped is None:
            pos = pending.find(mark)
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


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m avocado_bgsnap.flip_filter NONCE < stream > file",
              file=sys.stderr)
        return 2
    flipped = flip_stream(sys.stdin.buffer, sys.stdout.buffer, int(argv[0]))
    sys.stdout.buffer.flush()
    print(f"flip_filter: flipped stream byte {flipped}" if flipped is not None
          else "flip_filter: the workload's page 0 not seen, nothing flipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
