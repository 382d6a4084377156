"""The in-transit damage filter flips exactly one byte inside the workload's
page 0, and only there: not in a page that merely starts with the magic."""

import io
import struct

from avocado_bgsnap import flip_filter
from avocado_bgsnap.verifier import PAGE_MAGIC

NONCE = 0x1234_5678_9ABC


def page(nonce):
    head = struct.pack("<QQ", PAGE_MAGIC, nonce)
    return head + bytes(range(256)) * 15 + bytes(4096 - 16 - 3840)


def stream(prefix_len, decoy=b""):
    return bytes(prefix_len) + decoy + page(NONCE) + b"tail" * 100


def run(data, chunk, nonce=NONCE):
    old = flip_filter.CHUNK
    flip_filter.CHUNK = chunk
    try:
        out = io.BytesIO()
        offset = flip_filter.flip_stream(io.BytesIO(data), out, nonce)
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


def test_a_page_with_the_magic_but_another_nonce_is_left_alone():
    # the workload binary's code holds the magic; an older run's page holds
    # another nonce: neither is this workload's page 0
    code = struct.pack("<Q", PAGE_MAGIC) + b"\x90" * 600
    decoy = code + page(NONCE ^ 1)
    data = stream(100, decoy)
    for chunk in (9, 4096, 1 << 20):
        offset, out = run(data, chunk)
        assert offset == 100 + len(decoy) + flip_filter.OFFSET, chunk
        assert out[:100 + len(decoy)] == data[:100 + len(decoy)]


def test_no_page_no_change():
    data = b"no magic here" * 1000 + page(NONCE ^ 7)
    offset, out = run(data, 100)
    assert offset is None and out == data


def test_the_command_line_needs_the_nonce(capsys):
    assert flip_filter.main([]) == 2
    assert "NONCE" in capsys.readouterr().err


def test_page_magic_matches_the_c_header():
    from avocado_bgsnap.paths import PACKAGE_DIR
    header = (PACKAGE_DIR / "guest" / "wl" / "wl_core.h").read_text()
    assert "wl_magic_page 0x%xull" % PAGE_MAGIC in header.lower()


def test_page_header_is_magic_then_nonce_xor_page():
    """The one definition of a page's header, used by both negative controls
    (a stream in transit and a file on disk)."""
    from avocado_bgsnap.verifier import page_header

    assert page_header(0x1234) == struct.pack("<QQ", PAGE_MAGIC, 0x1234)
    assert page_header(0x1234, 5) == struct.pack("<QQ", PAGE_MAGIC, 0x1234 ^ 5)
    assert page_header(0x1234, 5) != page_header(0x1234)
