"""Side-by-side QEMU builds the suite can test besides the system QEMU.

A build is a QEMU that is *not installed*: Debian's ``bookworm-backports``
QEMU unpacked into ``BGSNAP_HOME/qemu/`` (:func:`fetch_debian_backports`),
or any folder a user points at (:func:`build_from_dir`).  Each build is
probed (``host.probe_qemu``) before it is recorded in the manifest
``BGSNAP_HOME/qemu-builds.json`` and gets its own probe-stall wrapper
``BGSNAP_HOME/bin/qemu-<name>`` that carries its ``-L`` firmware dirs and
``QEMU_MODULE_DIR``.  ``vtsetup`` turns the manifest into Cartesian
variants (``qemu-builds.cfg``).  See docs/qemu-builds.md.

No avocado imports and no work at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import host, paths, vt_compat

MANIFEST_NAME = "qemu-builds.json"
MANIFEST_VERSION = 1
QEMU_BIN = "qemu-system-x86_64"
SYSTEM = "system"
SOURCES = ("system", "debian-backports", "user-dir")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
BACKPORTS_SUITE = "bookworm-backports"
BACKPORTS_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")
PACKAGES_STAMP = ".bgsnap-packages"
# Where a QEMU looks for modules after QEMU_MODULE_DIR (its compiled-in
# CONFIG_QEMU_MODDIR): the system QEMU's modules live there.
SYSTEM_MODULE_GLOBS = ("/usr/lib/*/qemu", "/usr/lib/qemu", "/usr/lib64/qemu",
                       "/usr/local/lib/*/qemu", "/usr/local/lib/qemu", "/usr/local/lib64/qemu")
MODULE_PLACEHOLDER = ("not a QEMU module: placeholder written by avocado-bgsnap so that this "
                      "build does not load the system QEMU's {name} (docs/qemu-builds.md)\n")
WRAPPER_CHECK_TIMEOUT = 30
DEBIAN_SOURCES = "sources.list.d/debian.sources"
ONE_LINE_SOURCES = "sources.list"
# Update hooks of the host's apt.conf.d (packagekit, appstream, docker-clean)
# must not run for our private lists: the private apt.conf clears them.
PRIVATE_APT_CONF = """// Written by avocado-bgsnap for a private, temporary apt configuration.
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
"""

Log = Callable[[str], None]


class QemuBuildError(Exception):
    """A QEMU build could not be fetched, found, probed or recorded."""


# --------------------------------------------------------------------------
# The build and its manifest
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class QemuBuild:
    """One QEMU the suite can run, and how to run it."""

    name: str                       # cfg-safe id: system, qemu10_0_2, ...
    binary: str                     # the real qemu-system-x86_64
    extra_args: tuple[str, ...] = ()  # e.g. -L DIR/usr/share/qemu
    env: dict[str, str] = field(default_factory=dict, hash=False)  # e.g. QEMU_MODULE_DIR
    source: str = "user-dir"        # one of SOURCES
    version_text: str = ""          # from probe_qemu, e.g. "10.0.2 (Debian 1:10.0.2+ds-...)"
    root: str = ""                  # folder the build was found in

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "binary": self.binary, "extra_args": list(self.extra_args),
                "env": dict(self.env), "source": self.source,
                "version_text": self.version_text, "root": self.root}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QemuBuild:
        return cls(name=str(data["name"]), binary=str(data["binary"]),
                   extra_args=tuple(str(a) for a in data.get("extra_args", ())),
                   env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
                   source=str(data.get("source", "user-dir")),
                   version_text=str(data.get("version_text", "")),
                   root=str(data.get("root", "")))

    def run_env(self) -> dict[str, str]:
        """The process environment this build runs with."""
        return {**os.environ, **self.env}


def manifest_path(home: Path | None = None) -> Path:
    return (home or paths.bgsnap_home()) / MANIFEST_NAME


def builds_dir(home: Path | None = None) -> Path:
    """Where unpacked builds live (``BGSNAP_HOME/qemu``)."""
    return (home or paths.bgsnap_home()) / "qemu"


def backports_dir(home: Path | None = None) -> Path:
    return builds_dir(home) / "debian-backports"


def wrapper_path(name: str, home: Path | None = None) -> Path:
    """The probe-stall wrapper a build's tests use as ``qemu_binary``."""
    return (home or paths.bgsnap_home()) / "bin" / f"qemu-{name}"


def check_name(name: str) -> str:
    if name == SYSTEM or not NAME_RE.match(name or ""):
        raise QemuBuildError(
            f"bad build name {name!r}: lower-case letters, digits and '_', starting with a "
            f"letter, at most 40 characters, not {SYSTEM!r} (it names Cartesian variants)")
    return name


def default_name(version: tuple[int, int, int]) -> str:
    """``qemu10_0_2`` for QEMU 10.0.2."""
    return "qemu%d_%d_%d" % tuple(version)


def load_builds(path: Path | None = None) -> list[QemuBuild]:
    """The side-by-side builds in the manifest (the system QEMU is implicit)."""
    path = path or manifest_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise QemuBuildError(f"cannot read {path}: {exc}") from exc
    try:
        return [QemuBuild.from_dict(item) for item in data["builds"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise QemuBuildError(f"{path} is not a qemu-builds manifest: {exc}") from exc


def system_only(ref: str, path: Path | None = None) -> str:
    """With side-by-side builds registered a test name selects it on every
    build (``system.X``, ``qemu10_0_2.X``): ``ref`` on the system QEMU only,
    unless it already names a build."""
    builds = load_builds(path)
    names = {SYSTEM, *(b.name for b in builds)}
    if not builds or ref.split(".", 1)[0] in names:
        return ref
    return f"{SYSTEM}.{ref}"


def save_builds(builds: list[QemuBuild], path: Path | None = None) -> Path:
    """Write the manifest atomically (temp file in the same dir, then rename)."""
    path = path or manifest_path()
    data = {"version": MANIFEST_VERSION, "builds": [b.to_dict() for b in builds]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def refuse_clash(build: QemuBuild, builds: list[QemuBuild]) -> list[QemuBuild]:
    """``builds`` unchanged, unless ``build``'s name is bad or taken by another binary."""
    check_name(build.name)
    for old in builds:
        if old.name == build.name and old.binary != build.binary:
            raise QemuBuildError(
                f"a build named {build.name!r} already exists ({old.binary}): remove it "
                f"('avocado bgsnap qemu-remove {build.name}') or choose another --name")
    return builds


def add_build(build: QemuBuild, path: Path | None = None) -> list[QemuBuild]:
    """Record ``build``; a build of the same name and binary is replaced."""
    builds = refuse_clash(build, load_builds(path))
    builds = [b for b in builds if b.name != build.name] + [build]
    save_builds(builds, path)
    return builds


def remove_build(name: str, path: Path | None = None) -> QemuBuild:
    """Drop ``name`` from the manifest; return what was removed."""
    if name == SYSTEM:
        raise QemuBuildError("the system QEMU is not in the manifest and cannot be removed")
    builds = load_builds(path)
    found = [b for b in builds if b.name == name]
    if not found:
        known = ", ".join(b.name for b in builds) or "none"
        raise QemuBuildError(f"no QEMU build named {name!r} (known: {known})")
    save_builds([b for b in builds if b.name != name], path)
    return found[0]


# --------------------------------------------------------------------------
# Registering: probe, wrapper, manifest
# --------------------------------------------------------------------------

def probe(binary: str, extra_args: tuple[str, ...], env: Mapping[str, str]) -> host.QemuInfo:
    """``host.probe_qemu`` with the build's args and environment."""
    try:
        return host.probe_qemu(binary, extra_args=extra_args, env={**os.environ, **env})
    except host.HostCheckError as exc:
        raise QemuBuildError(f"QEMU {binary} does not run: {exc}") from exc


# A QEMU built with modules looks for a module in QEMU_MODULE_DIR first, then
# in its compiled-in module dir, which on a host with a system QEMU holds the
# system QEMU's modules.  A module the build does not ship (Debian's 10.0
# qemu-system-x86 has no ui-opengl, audio-pa, ...) is then taken from the
# system QEMU: QEMU 10 refuses it ("Only modules from the same build can be
# loaded") and aborts on an assertion (util/module.c module_load_dso) --
# avocado-vt's '-device help' and QMP probes end there.  So the wrapper
# points QEMU_MODULE_DIR at an overlay: the build's own modules, plus a
# placeholder (fails to load, cleanly) for every other system module name.


def module_overlay_dir(name: str, home: Path | None = None) -> Path:
    return builds_dir(home) / "modules" / name


def system_module_names(own: Path | None, globs: tuple[str, ...] = SYSTEM_MODULE_GLOBS
                        ) -> set[str]:
    """Module file names found in the system module dirs (not ``own``)."""
    own_real = own.resolve() if own else None
    names = set()
    for pattern in globs:
        for folder in Path("/").glob(pattern.lstrip("/")):
            if folder.is_dir() and folder.resolve() != own_real:
                names.update(p.name for p in folder.glob("*.so"))
    return names


def write_module_overlay(dest: Path, own: Path | None, masked: set[str]) -> Path:
    """``dest``: links to the build's modules + placeholders for ``masked`` names."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    own_modules = sorted(own.glob("*.so")) if own and own.is_dir() else []
    for module in own_modules:
        (tmp / module.name).symlink_to(module)
    for name in sorted(masked - {m.name for m in own_modules}):
        (tmp / name).write_text(MODULE_PLACEHOLDER.format(name=name))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def build_for_wrapper(wrapper: str, home: Path | None = None) -> QemuBuild | None:
    """The registered build whose wrapper is ``wrapper``, or None."""
    target = Path(wrapper).resolve()
    for build in load_builds(manifest_path(home)):
        if build.name != SYSTEM and wrapper_path(build.name, home).resolve() == target:
            return build
    return None


def wrapper_env(build: QemuBuild, home: Path | None = None) -> dict[str, str]:
    """The build's environment with QEMU_MODULE_DIR on a fresh module overlay."""
    own = build.env.get("QEMU_MODULE_DIR")
    own_dir = Path(own) if own else None
    overlay = write_module_overlay(module_overlay_dir(build.name, home), own_dir,
                                   system_module_names(own_dir))
    return {**build.env, "QEMU_MODULE_DIR": str(overlay)}


def write_wrapper(build: QemuBuild, home: Path | None = None) -> Path:
    return vt_compat.write_qemu_wrapper(wrapper_path(build.name, home), build.binary,
                                        build.extra_args, wrapper_env(build, home))


def wrapper_check_argv(wrapper: Path) -> list[str]:
    """What avocado-vt's device probe does; it loads every QOM module."""
    return [str(wrapper), "-machine", "none", "-nodefaults", "-display", "none",
            "-device", "help"]


def check_wrapper(wrapper: Path) -> None:
    """Run the wrapper once the way avocado-vt probes it."""
    argv = wrapper_check_argv(wrapper)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=WRAPPER_CHECK_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise QemuBuildError(f"{' '.join(argv)} did not finish in {exc.timeout}s") from exc
    if proc.returncode != 0:
        raise QemuBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-1200:]}")


def register(build: QemuBuild, home: Path | None = None) -> Path:
    """Give ``build`` its wrapper, check it and record the build; return the wrapper."""
    known = {b.name for b in refuse_clash(build, load_builds(manifest_path(home)))}
    wrapper = write_wrapper(build, home)
    try:
        check_wrapper(wrapper)
    except QemuBuildError:
        if build.name not in known:
            _remove_wrapper(build.name, home)
        raise
    add_build(build, manifest_path(home))
    return wrapper


def _remove_wrapper(name: str, home: Path | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        wrapper_path(name, home).unlink()
    shutil.rmtree(module_overlay_dir(name, home), ignore_errors=True)


def unregister(name: str, home: Path | None = None) -> QemuBuild:
    """Forget ``name``: manifest entry, wrapper, and files the suite unpacked itself."""
    build = remove_build(name, manifest_path(home))
    _remove_wrapper(name, home)
    root = Path(build.root) if build.root else None
    if root and build.source == "debian-backports" and root.is_relative_to(builds_dir(home)):
        shutil.rmtree(root, ignore_errors=True)
    return build


# --------------------------------------------------------------------------
# A build folder: which layout, which args
# --------------------------------------------------------------------------

def _multiarch_moddir(lib: Path) -> Path | None:
    """``lib/<triplet>/qemu`` or ``lib/qemu``, if present."""
    found = sorted(p for p in lib.glob("*/qemu") if p.is_dir())
    if found:
        return found[0]
    return lib / "qemu" if (lib / "qemu").is_dir() else None


def _firmware_args(*dirs: Path) -> tuple[str, ...]:
    args: list[str] = []
    for d in dirs:
        if d.is_dir():
            args += ["-L", str(d)]
    return tuple(args)


def _prefix_layout(prefix: Path) -> tuple[str, tuple[str, ...], dict[str, str]] | None:
    """``PREFIX/bin/qemu-system-x86_64`` (+ share/qemu, share/seabios, lib/.../qemu)."""
    binary = prefix / "bin" / QEMU_BIN
    if not binary.is_file():
        return None
    args = _firmware_args(prefix / "share" / "qemu", prefix / "share" / "seabios")
    moddir = _multiarch_moddir(prefix / "lib")
    env = {"QEMU_MODULE_DIR": str(moddir)} if moddir else {}
    return str(binary), args, env


def _build_tree_layout(tree: Path) -> tuple[str, tuple[str, ...], dict[str, str]] | None:
    """A QEMU build tree: ``qemu-system-x86_64`` beside ``pc-bios/`` (modules
    are found beside the binary by QEMU itself)."""
    for d in (tree, tree / "build"):
        if (d / QEMU_BIN).is_file() and (d / "pc-bios").is_dir():
            return str(d / QEMU_BIN), _firmware_args(d / "pc-bios"), {}
    return None


def dir_layout(path: Path) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """(binary, extra_args, env) for a build folder.

    Accepted: an unpacked Debian tree (``usr/bin/qemu-system-x86_64``), an
    install prefix (``bin/qemu-system-x86_64``) or a build tree
    (``qemu-system-x86_64`` + ``pc-bios/``, also in ``build/``).
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise QemuBuildError(f"{path} is not a folder")
    for layout in (_prefix_layout(path / "usr"), _prefix_layout(path), _build_tree_layout(path)):
        if layout:
            return layout
    raise QemuBuildError(
        f"no QEMU build in {path}: expected usr/bin/{QEMU_BIN} (unpacked Debian packages), "
        f"bin/{QEMU_BIN} (install prefix) or {QEMU_BIN} beside pc-bios/ (build tree)")


def build_from_dir(path: Path, name: str | None = None, source: str = "user-dir",
                   probe_fn: Callable[..., host.QemuInfo] = probe) -> QemuBuild:
    """A probed :class:`QemuBuild` for the build folder ``path``."""
    if source not in SOURCES:
        raise QemuBuildError(f"unknown build source {source!r}")
    binary, extra_args, env = dir_layout(path)
    info = probe_fn(binary, extra_args, env)
    return QemuBuild(name=check_name(name or default_name(info.version)), binary=binary,
                     extra_args=extra_args, env=env, source=source,
                     version_text=info.version_text, root=str(Path(path).resolve()))


# --------------------------------------------------------------------------
# Which Debian, which apt source
# --------------------------------------------------------------------------

def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of os-release(5), quotes removed."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value
    return result


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    try:
        return parse_os_release(path.read_text())
    except OSError:
        return {}


def backports_plan(release: Mapping[str, str]) -> str | None:
    """The suite to fetch from (Debian 12), None when not needed (Debian 13),
    QemuBuildError elsewhere."""
    distro, version = release.get("ID", "?"), release.get("VERSION_ID", "")
    codename = release.get("VERSION_CODENAME", "")
    if distro == "debian" and (version == "12" or codename == "bookworm"):
        return BACKPORTS_SUITE
    if distro == "debian" and (version == "13" or codename == "trixie"):
        return None
    pretty = release.get("PRETTY_NAME") or f"{distro} {version}".strip()
    raise QemuBuildError(
        f"--backports fetches Debian 12 (bookworm)'s {BACKPORTS_SUITE} QEMU; this host is "
        f"{pretty}. Add a QEMU build folder instead: avocado bgsnap qemu-add --dir PATH")


@dataclass(frozen=True)
class AptSource:
    uri: str
    signed_by: str = ""  # a keyring path or an inline key block ("" = apt's default keys)


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs as dicts; continuation lines joined with newlines."""
    stanzas, current, key = [], {}, None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif raw[0] in " \t" and key:
            current[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def parse_deb822_source(text: str, codename: str = "bookworm") -> AptSource | None:
    """The first ``deb`` entry (preferring one that carries ``codename`` itself)."""
    entries = [s for s in _deb822_stanzas(text)
               if "deb" in s.get("types", "").split() and s.get("uris", "").split()
               and s.get("enabled", "yes").lower() != "no"]
    preferred = [s for s in entries if codename in s.get("suites", "").split()]
    if not entries:
        return None
    stanza = (preferred or entries)[0]
    return AptSource(stanza["uris"].split()[0], stanza.get("signed-by", ""))


def parse_one_line_source(text: str, codename: str = "bookworm") -> AptSource | None:
    """The first ``deb [options] URI SUITE ...`` line of a sources.list."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
        if not match:
            continue
        opts = dict(o.split("=", 1) for o in (match["opts"] or "").split() if "=" in o)
        entries.append((match["suite"], AptSource(match["uri"], opts.get("signed-by", ""))))
    preferred = [src for suite, src in entries if suite == codename]
    if not entries:
        return None
    return (preferred or [src for _, src in entries])[0]


def system_debian_source(etc_apt: Path = Path("/etc/apt"),
                         codename: str = "bookworm") -> AptSource:
    """URI and Signed-By of the host's Debian archive entry."""
    deb822, one_line = etc_apt / DEBIAN_SOURCES, etc_apt / ONE_LINE_SOURCES
    with contextlib.suppress(OSError):
        found = parse_deb822_source(deb822.read_text(), codename)
        if found:
            return found
    with contextlib.suppress(OSError):
        found = parse_one_line_source(one_line.read_text(), codename)
        if found:
            return found
    raise QemuBuildError(f"no Debian 'deb' entry in {deb822} or {one_line}: cannot tell "
                         f"which mirror offers {BACKPORTS_SUITE}")


def backports_sources_text(source: AptSource, suite: str = BACKPORTS_SUITE) -> str:
    """The temporary deb822 entry: the host's mirror and key, another suite."""
    lines = ["Types: deb", f"URIs: {source.uri}", f"Suites: {suite}", "Components: main"]
    if source.signed_by:
        first, *rest = source.signed_by.split("\n")
        lines.append(f"Signed-By: {first}")
        lines += [" " + (r if r else ".") for r in rest]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# A private apt configuration (nothing under /etc/apt or /var/lib/apt changes)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PrivateApt:
    """apt pointed at its own sources, lists and cache below ``root``."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "apt.conf"

    @property
    def source_list(self) -> Path:
        return self.root / "sources.list"

    @property
    def source_parts(self) -> Path:
        return self.root / "sources.list.d"

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def options(self) -> list[str]:
        return ["-c", str(self.conf),
                "-o", f"Dir::Etc::SourceList={self.source_list}",
                "-o", f"Dir::Etc::SourceParts={self.source_parts}",
                "-o", f"Dir::State::Lists={self.lists}",
                "-o", f"Dir::Cache={self.cache}"]


def write_private_apt(root: Path, source: AptSource, suite: str = BACKPORTS_SUITE) -> PrivateApt:
    apt = PrivateApt(Path(root).resolve())
    for d in (apt.source_parts, apt.lists / "partial", apt.cache / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    apt.conf.write_text(PRIVATE_APT_CONF)
    apt.source_list.write_text("")
    (apt.source_parts / "bgsnap-backports.sources").write_text(
        backports_sources_text(source, suite))
    return apt


def apt_update_argv(apt: PrivateApt) -> list[str]:
    return ["apt-get", *apt.options(), "-q", "update"]


def apt_madison_argv(apt: PrivateApt, packages: tuple[str, ...] = BACKPORTS_PACKAGES) -> list[str]:
    return ["apt-cache", *apt.options(), "madison", *packages]


def apt_show_argv(apt: PrivateApt, versions: Mapping[str, str]) -> list[str]:
    return ["apt-cache", *apt.options(), "show", "--no-all-versions",
            *(f"{p}={v}" for p, v in versions.items())]


def apt_download_argv(apt: PrivateApt, versions: Mapping[str, str]) -> list[str]:
    return ["apt-get", *apt.options(), "-q", "download",
            *(f"{p}={v}" for p, v in versions.items())]


def dpkg_extract_argv(deb: Path, dest: Path) -> list[str]:
    return ["dpkg-deb", "-x", str(deb), str(dest)]


def parse_madison(text: str, suite: str = BACKPORTS_SUITE) -> dict[str, str]:
    """{package: newest version} among ``apt-cache madison`` lines from ``suite``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or f" {suite}/" not in f" {parts[2]}":
            continue
        found.setdefault(parts[0], parts[1])  # madison lists newest first
    return found


def parse_sizes(text: str) -> dict[str, int]:
    """{package: Size} from ``apt-cache show`` stanzas."""
    return {s["package"]: int(s["size"]) for s in _deb822_stanzas(text)
            if "package" in s and s.get("size", "").isdigit()}


def strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise QemuBuildError(f"{argv[0]} not found (Debian's apt/dpkg are needed)") from exc
    if proc.returncode != 0:
        raise QemuBuildError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[-1200:]}")
    return proc.stdout


def _writable_by_apt_sandbox(folder: Path) -> None:
    """As root apt downloads as user _apt: let it write here (no warning)."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError, OSError):
        os.chown(folder, pwd.getpwnam("_apt").pw_uid, -1)


# --------------------------------------------------------------------------
# Debian 12: QEMU from bookworm-backports, unpacked, never installed
# --------------------------------------------------------------------------

def resolve_backports(apt: PrivateApt, log: Log) -> dict[str, str]:
    """apt-get update (private lists), then the suite's version of each package."""
    log(f"reading {BACKPORTS_SUITE} package lists (private apt lists in {apt.lists})")
    _run(apt_update_argv(apt))
    versions = parse_madison(_run(apt_madison_argv(apt)))
    missing = [p for p in BACKPORTS_PACKAGES if p not in versions]
    if missing:
        raise QemuBuildError(f"{BACKPORTS_SUITE} offers no {', '.join(missing)}")
    return {p: versions[p] for p in BACKPORTS_PACKAGES}


def unpacked_matches(dest: Path, versions: Mapping[str, str]) -> bool:
    """``dest`` already holds exactly these package versions."""
    try:
        return json.loads((dest / PACKAGES_STAMP).read_text()) == dict(versions)
    except (OSError, ValueError):
        return False


def download(apt: PrivateApt, versions: Mapping[str, str], folder: Path, log: Log) -> list[Path]:
    sizes = parse_sizes(_run(apt_show_argv(apt, versions)))
    for package, version in versions.items():
        log(f"  {package} {version}: {sizes.get(package, 0) / 2**20:.1f} MiB")
    log(f"downloading {len(versions)} packages, {sum(sizes.values()) / 2**20:.1f} MiB")
    folder.mkdir(parents=True, exist_ok=True)
    _writable_by_apt_sandbox(folder)
    for line in _run(apt_download_argv(apt, versions), cwd=folder).splitlines():
        if line.strip():
            log("  " + line.strip())
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != len(versions):
        raise QemuBuildError(f"apt-get download left {len(debs)} .deb files in {folder}, "
                             f"expected {len(versions)}")
    return debs


def unpack(debs: list[Path], dest: Path, versions: Mapping[str, str], log: Log) -> Path:
    """``dpkg-deb -x`` every .deb into a fresh ``dest`` (all or nothing)."""
    tmp = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for deb in debs:
            log(f"unpacking {deb.name}")
            _run(dpkg_extract_argv(deb, tmp))
        (tmp / PACKAGES_STAMP).write_text(json.dumps(dict(versions), indent=2) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_debian_backports(dest_root: Path, log: Log, name: str | None = None,
                           os_release: Path = Path("/etc/os-release"),
                           etc_apt: Path = Path("/etc/apt")) -> QemuBuild | None:
    """Debian 12: the bookworm-backports QEMU unpacked into ``dest_root/<version>/``.

    apt runs with a private configuration (its own sources, lists and
    cache in a temporary folder under ``dest_root``), so the host's apt
    configuration and lists are never touched.  Returns None (with a
    message) on Debian 13, whose system QEMU is already 10.x.
    """
    suite = backports_plan(read_os_release(os_release))
    if suite is None:
        log("Debian 13 (trixie) already ships QEMU 10.x as its system QEMU, which the suite "
            "tests by default: nothing to fetch. Other builds: avocado bgsnap qemu-add --dir PATH")
        return None
    source = system_debian_source(etc_apt)
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".apt-") as tmp:
        apt = write_private_apt(Path(tmp) / "apt", source, suite)
        log(f"temporary apt source: {source.uri} {suite} main (private, removed afterwards)")
        versions = resolve_backports(apt, log)
        dest = dest_root / strip_epoch(versions["qemu-system-x86"])
        if unpacked_matches(dest, versions):
            log(f"already unpacked: {dest}")
        else:
            unpack(download(apt, versions, Path(tmp) / "debs", log), dest, versions, log)
    return build_from_dir(dest, name=name, source="debian-backports")


__all__ = [
    "AptSource", "PrivateApt", "QemuBuild", "QemuBuildError", "add_build", "build_from_dir",
    "dir_layout", "fetch_debian_backports", "load_builds", "register", "remove_build",
    "save_builds", "unregister", "wrapper_path",
]
