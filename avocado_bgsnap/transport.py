"""Where a snapshot goes and how it comes back: migration URI templates.

A transport is a pair of URI templates, one for the save (``migrate``) and
one for the restore (``-incoming`` / ``migrate-incoming``), plus the
migration capabilities it needs on both sides and the QEMU version that
introduced it.  Templates know two placeholders:

* ``{path}``   the snapshot file (shell-quoted inside ``exec:`` commands);
* ``{python}`` the Python running the suite (for filters shipped with it).

Bad templates are refused by :func:`custom` / :func:`by_name` with a clear
message, before any VM starts.
"""

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = ("path", "python")
SCHEMES = ("exec:", "file:")


class TransportError(ValueError):
    """A transport template is invalid or the QEMU under test lacks it."""


@dataclass(frozen=True)
class Transport:
    name: str
    save_template: str
    restore_template: str
    capabilities: tuple[str, ...] = ()
    min_qemu: tuple[int, int, int] = (6, 0, 0)
    suffix: str = ".bin"

    def _render(self, template: str, path: Path) -> str:
        quote = shlex.quote if template.startswith("exec:") else str
        return template.format(path=quote(str(path)), python=shlex.quote(sys.executable))

    def save_uri(self, path: Path) -> str:
        return self._render(self.save_template, path)

    def restore_uri(self, path: Path) -> str:
        return self._render(self.restore_template, path)

    @property
    def restore_is_exec(self) -> bool:
        return self.restore_template.startswith("exec:")

    def unsupported_reason(self, qemu_version: tuple, qemu_capabilities: frozenset) -> str | None:
        """Why the QEMU under test cannot use this transport, or None."""
        if tuple(qemu_version) < self.min_qemu:
            return ("transport %s needs QEMU %s+, this is %s" % (
                self.name, ".".join(map(str, self.min_qemu)), ".".join(map(str, qemu_version))))
        missing = [c for c in self.capabilities if c not in qemu_capabilities]
        if missing:
            return f"transport {self.name} needs migration capabilities this QEMU lacks: {missing}"
        return None


# The flip filter damages the stream on its way to the file (negative control);
# it needs the workload's nonce: see damaged_in_transit().
FLIP_FILTER = "{python} -m avocado_bgsnap.flip_filter %d"
# A slow target (32 MiB/s): long enough a save for actions during it.
SLOW_FILTER = "{python} -m avocado_bgsnap.throttle_filter 32"

BUILTIN = {
    t.name: t for t in (
        Transport("file", "exec:cat > {path}", "exec:cat {path}"),
        Transport("gzip", "exec:gzip -1 -c > {path}", "exec:gzip -dc {path}", suffix=".bin.gz"),
        Transport("zstd", "exec:zstd -q -1 -c > {path}", "exec:zstd -q -dc {path}",
                  suffix=".bin.zst"),
        Transport("file_uri", "file:{path}", "file:{path}", min_qemu=(8, 2, 0)),
        Transport("mapped_ram", "file:{path}", "file:{path}", ("mapped-ram",), (9, 0, 0)),
        Transport("slow", "exec:" + SLOW_FILTER + " > {path}", "exec:cat {path}"),
    )
}


def damaged_in_transit(nonce: int) -> Transport:
    """The negative control's transport: flips a byte of the page 0 of the
    workload with this nonce on its way to the file."""
    return validate(Transport("damaged_in_transit",
                              "exec:" + FLIP_FILTER % nonce + " > {path}", "exec:cat {path}"))


def _check_template(kind: str, template: str) -> None:
    if not template.startswith(SCHEMES):
        raise TransportError(f"{kind} URI {template!r}: must start with one of {SCHEMES}")
    names = set(re.findall(r"{(\w*)}", template))
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        raise TransportError(f"{kind} URI {template!r}: unknown placeholder(s) {sorted(unknown)}; "
                             f"known: {{path}}, {{python}}")
    if "path" not in names:
        raise TransportError(f"{kind} URI {template!r}: has no {{path}}")
    try:
        template.format(path="x", python="x")
    except (ValueError, IndexError, KeyError) as exc:
        raise TransportError(f"{kind} URI {template!r}: {exc}") from None
    if template.startswith("file:") and template != "file:{path}":
        raise TransportError(f"{kind} URI {template!r}: a file: URI is exactly 'file:{{path}}'")
    if template.startswith("exec:"):
        command = template[len("exec:"):].format(path="x", python=sys.executable)
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise TransportError(f"{kind} URI {template!r}: {exc}") from None
        if not words:
            raise TransportError(f"{kind} URI {template!r}: empty command")
        if shutil.which(words[0]) is None:
            raise TransportError(f"{kind} URI {template!r}: command {words[0]!r} not found "
                                 f"on this host")


def validate(transport: Transport) -> Transport:
    _check_template("save", transport.save_template)
    _check_template("restore", transport.restore_template)
    if transport.save_template.startswith("file:") != transport.restore_template.startswith("file:"):
        raise TransportError("save and restore URIs must both be file: or both exec:")
    return transport


def by_name(name: str) -> Transport:
    try:
        return validate(BUILTIN[name])
    except KeyError:
        raise TransportError(f"unknown transport {name!r}: choose one of "
                             f"{', '.join(BUILTIN)} or set bgsnap_save_uri and "
                             f"bgsnap_restore_uri") from None


def custom(save_template: str, restore_template: str, capabilities: tuple = ()) -> Transport:
    return validate(Transport("custom", save_template, restore_template, tuple(capabilities)))
