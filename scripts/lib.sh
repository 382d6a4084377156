# Shared by setup-and-run.sh and run-tests.sh: host packages and the venv.
# Sourced, not run.  Everything lands in $BGSNAP_HOME (default <checkout>/.bgsnap).

BGSNAP_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BGSNAP_HOME=${BGSNAP_HOME:-$BGSNAP_SRC/.bgsnap}
VENV=$BGSNAP_HOME/venv

# Debian packages: QEMU, the guest's parts (busybox-static, a C toolchain
# with static glibc for the workload) and the tools avocado-vt insists on
# (its bootstrap checks xz tcpdump nc ip arping diff gcc; it runs ps; its serial console
# is 'nc -U', which needs netcat-openbsd); the Debian guests (docs/guests.md):
# debootstrap, and e2fsprogs for the images made without mounting; the fleet
# (docs/fleet.md): openssh-client, avocado's remote spawner logs in with ssh.
DEB_PACKAGES="qemu-system-x86 qemu-utils busybox-static gcc libc6-dev make xz-utils
 tcpdump netcat-openbsd arping iproute2 diffutils procps cpio zstd python3-venv ca-certificates
 debootstrap e2fsprogs openssh-client"

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

ensure_host_packages() {
    local missing=() p
    for p in $DEB_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "avocado-bgsnap needs these Debian packages, which are not installed:" >&2
        echo "    ${missing[*]}" >&2
        echo "Install them as root (apt-get install ${missing[*]}), or run this script as root." >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

ensure_venv() {
    local stamp=$VENV/.bgsnap-installed want
    want=$(cat "$BGSNAP_SRC/setup.py" "$BGSNAP_SRC/VERSION" | sha256sum | cut -c1-16)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing avocado-bgsnap and its Python dependencies into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$BGSNAP_SRC[test,ci,fleet]"
        echo "$want" > "$stamp"
    fi
    # quiet start-up: the pkg_resources warning comes before any plugin
    # loads (vt_compat.py, workaround 9)
    "$VENV/bin/python" -c 'from avocado_bgsnap import vt_compat; vt_compat.install_startup_pth()'
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
}

ensure_suite() {
    ensure_host_packages
    ensure_venv
    say "building the guest and configuring Avocado-VT (cached after the first run)"
    python -m avocado_bgsnap.vtsetup >/dev/null   # lets avocado-vt's plugins load
    avocado bgsnap setup
}
