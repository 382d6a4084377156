"""Transport templates: rendering, validation before any VM, QEMU support."""

import shlex
import sys
from pathlib import Path

import pytest

from avocado_bgsnap import transport


def test_exec_paths_are_shell_quoted_file_paths_are_not():
    path = Path("/tmp/a dir/snap.bin")
    file_t = transport.by_name("file")
    assert file_t.save_uri(path) == "exec:cat > " + shlex.quote(str(path))
    assert shlex.split(file_t.restore_uri(path)[len("exec:"):]) == ["cat", str(path)]
    uri_t = transport.by_name("file_uri")
    assert uri_t.save_uri(path) == "file:/tmp/a dir/snap.bin" and not uri_t.restore_is_exec


def test_python_placeholder_is_the_running_interpreter():
    t = transport.damaged_in_transit(12345)
    assert sys.executable in t.save_uri(Path("/x"))
    assert "flip_filter 12345 >" in t.save_uri(Path("/x"))


@pytest.mark.parametrize("save, restore, message", [
    ("exec:cat > /tmp/fixed", "exec:cat {path}", "has no {path}"),
    ("exec:cat > {path} {dest}", "exec:cat {path}", "unknown placeholder"),
    ("tcp:1.2.3.4:{path}", "exec:cat {path}", "must start"),
    ("file:{path}.x", "file:{path}", "exactly 'file:{path}'"),
    ("exec:no-such-compressor-xyz > {path}", "exec:cat {path}", "not found on this host"),
    ("exec:cat > {path}", "file:{path}", "must both be file: or both exec:"),
    ("exec:cat > '{path}", "exec:cat {path}", "quotation"),
])
def test_bad_templates_are_refused_with_the_reason(save, restore, message):
    with pytest.raises(transport.TransportError, match=message):
        transport.custom(save, restore)


def test_unknown_name():
    with pytest.raises(transport.TransportError, match="unknown transport 'nfs'"):
        transport.by_name("nfs")


def test_support_by_version_and_capability():
    caps = frozenset({"background-snapshot"})
    assert transport.by_name("file").unsupported_reason((7, 2, 22), caps) is None
    assert "8.2.0+" in transport.by_name("file_uri").unsupported_reason((7, 2, 22), caps)
    assert transport.by_name("file_uri").unsupported_reason((10, 0, 2), caps) is None
    assert "mapped-ram" in transport.by_name("mapped_ram").unsupported_reason((10, 0, 2), caps)
    assert transport.by_name("mapped_ram").unsupported_reason(
        (10, 0, 2), caps | {"mapped-ram"}) is None
