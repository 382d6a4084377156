"""The in-transit damage filter flips exactly one byte inside a workload page."""

import io
import struct

from avocado_bgsnap import flip_filter
from avocado_bgsnap.verifier import PAGE_MAGIC


def stream(prefix_len):
    page = struct.pack("<Q", PAGE_MAGIC) + bytes(range(256)) * 15 + bytes(4096 - 8 - 3840)
    return bytes(prefix_len) + page + b"tail" * 100


def run(data, chunk):
    old = flip_filter.CHUNK
    flip_filter.CHUNK = chunk
    try:
        out = io.BytesIO()
        offset = flip_filter.flip_stream(io.BytesIO(data), out)
    finally:
        flip_filter.CHUNK = old
    return offset, out.getvalue()


def test_one_byte_flipped_whatever_the_chunking():
    data = stream(3000)
    for chunk in (1, 7, 100, 517, 4096, 1 << 20):
        offset, out = run(data, chunk)
        assert offset == 3000 + flip_filter.OFFSET
        assert len(out) == len(data)
        diff = [i for i, (a, b) in enumerate(zip(data, out)) if a != b]
        assert diff == [offset], chunk


def test_no_page_no_change():
    data = b"no magic here" * 1000
    offset, out = run(data, 100)
    assert offset is None and out == data


def test_page_magic_matches_the_c_header():
    from avocado_bgsnap.paths import PACKAGE_DIR
    header = (PACKAGE_DIR / "guest" / "wl" / "wl_core.h").read_text()
    assert "wl_magic_page 0x%xull" % PAGE_MAGIC in header.lower()
