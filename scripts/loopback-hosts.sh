#!/bin/bash
# Test "hosts" on this machine for avocado's remote spawner (docs/fleet.md).
#
#   scripts/loopback-hosts.sh up [N]   # N hosts (default 2): sshd on 127.0.0.2 .. 127.0.0.(N+1)
#   scripts/loopback-hosts.sh status
#   scripts/loopback-hosts.sh down     # stop them; every process in them dies with them
#
# Each host is an sshd in its own mount, PID and UTS namespace (hostname
# bgsnap-hostK), listening on one loopback address only (port 2022), with its
# own /run, and the job results dirs hidden: BGSNAP_HOME/results and the dirs
# in BGSNAP_FLEET_HIDE (space-separated) are empty tmpfs there.  openssh-server is not installed on this machine: its
# Debian package is unpacked under BGSNAP_HOME/fleet/openssh and overlaid on
# /usr inside the namespaces only; /etc gets the host's sshd_config, host
# key and an 'sshd' privilege-separation user the same way.  The suite is
# the one of this checkout (same filesystem; /tmp is shared, a checkout
# may live there).  Login is root with a key made
# here.  'up' writes BGSNAP_HOME/fleet/remote.conf: pass it as
# 'avocado --config ... run --spawner remote ...' (scripts/fleet-run.sh).
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
FLEET=$BGSNAP_HOME/fleet
PORT=${BGSNAP_FLEET_PORT:-2022}
SSHD_PACKAGES="openssh-server libwrap0"

address() { echo "127.0.0.$1"; }   # hostK listens on 127.0.0.K

unpack_sshd() {
    [ -x "$FLEET/openssh/usr/sbin/sshd" ] && return 0
    command -v ssh >/dev/null || { echo "ssh (openssh-client) is needed" >&2; exit 1; }
    local debs; debs=$(mktemp -d)
    say "fetching $SSHD_PACKAGES (unpacked under $FLEET/openssh, not installed)"
    (cd "$debs" && apt-get download $SSHD_PACKAGES >/dev/null 2>&1) \
        || { apt-get update -qq && (cd "$debs" && apt-get download $SSHD_PACKAGES >/dev/null); }
    mkdir -p "$FLEET/openssh.new"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$FLEET/openssh.new"; done
    rm -rf "$debs" "$FLEET/openssh"
    mv "$FLEET/openssh.new" "$FLEET/openssh"
}

host_config() {   # k -> $FLEET/hostK/etc: sshd_config, host key, passwd with 'sshd'
    local k=$1 etc=$FLEET/host$1/etc
    mkdir -p "$etc/ssh"
    [ -f "$etc/ssh/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$etc/ssh/ssh_host_ed25519_key"
    cp /etc/passwd "$etc/passwd"
    getent passwd sshd >/dev/null || echo 'sshd:x:65533:65534:sshd privsep:/run/sshd:/usr/sbin/nologin' >> "$etc/passwd"
    echo "bgsnap-host$k" > "$etc/hostname"
    cat > "$etc/ssh/sshd_config" <<EOF
ListenAddress $(address "$k"):$PORT
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $FLEET/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
EOF
    cat > "$FLEET/host$k.json" <<EOF
{"client": "ssh", "host": "$(address "$k")", "port": "$PORT", "username": "root",
 "password": "", "prompt": "^.*[#\$] *\$", "identity_file": "$FLEET/client_key",
 "preferred_authentication": "publickey", "timeout": 30}
EOF
}

# inside the namespaces (PID 1 is sshd, so stopping it ends everything in there)
inside() {
    local k=$1
    mount -t overlay overlay -o "lowerdir=$FLEET/openssh/usr:/usr" /usr
    mount -t overlay overlay -o "lowerdir=$FLEET/host$k/etc:/etc" /etc
    hostname "bgsnap-host$k"
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/sshd
    # like a real remote host, it does not see the job's results: what a
    # test writes there must come back through avocado's status server
    local dir
    for dir in "$BGSNAP_HOME/results" ${BGSNAP_FLEET_HIDE:-}; do
        mkdir -p "$dir"
        mount -t tmpfs -o mode=755 tmpfs "$dir"
    done
    exec /usr/sbin/sshd -D -e
}

init_pid() { cat "$FLEET/host$1/pid" 2>/dev/null || true; }

is_up() { local pid; pid=$(init_pid "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

up() {
    local n=${1:-2} k slots=()
    [ "$(id -u)" -eq 0 ] || { echo "loopback hosts need root (namespaces, mounts)" >&2; exit 1; }
    unpack_sshd
    [ -f "$FLEET/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$FLEET/client_key"
    cp "$FLEET/client_key.pub" "$FLEET/authorized_keys"
    for k in $(seq 2 $(( n + 1 ))); do
        slots+=("\"$FLEET/host$k.json\"")
        # a host that is up keeps the config (and port) it was started with
        if is_up "$k"; then echo "host$k: already up"; continue; fi
        host_config "$k"
        setsid unshare --mount --pid --uts --fork --mount-proc --propagation private \
            bash "$0" _inside "$k" > "$FLEET/host$k/log" 2>&1 < /dev/null &
        local unshare_pid=$! child=""
        for _ in $(seq 50); do
            child=$(pgrep -P "$unshare_pid" || true)
            grep -q "Server listening" "$FLEET/host$k/log" 2>/dev/null && break
            sleep 0.1
        done
        [ -n "$child" ] && echo "$child" > "$FLEET/host$k/pid"
        grep -q "Server listening" "$FLEET/host$k/log" \
            || { echo "host$k did not start:"; cat "$FLEET/host$k/log"
                 echo "(another sshd on $(address "$k"):$PORT? choose a port: BGSNAP_FLEET_PORT=N)"
                 exit 1; } >&2
    done
    local IFS=,
    cat > "$FLEET/remote.conf" <<EOF
# Generated by scripts/loopback-hosts.sh: avocado's remote spawner over the loopback hosts.
[spawner.remote]
slots = [${slots[*]}]
setup_hook = cd $BGSNAP_SRC && . $VENV/bin/activate && export BGSNAP_REMOTE_TASK=1
EOF
    status
}

host_port() {   # the port host k was configured with
    sed -n 's/.*"port": "\([0-9]*\)".*/\1/p' "$FLEET/host$1.json" 2>/dev/null || echo "$PORT"
}

ssh_to() {
    ssh -q -p "$(host_port "$1")" -i "$FLEET/client_key" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 "root@$(address "$1")" "${@:2}"
}

status() {
    local k found=0
    for dir in "$FLEET"/host*/; do
        [ -d "$dir" ] || continue
        k=${dir%/}; k=${k##*host}
        found=1
        if is_up "$k"; then
            echo "host$k $(address "$k"):$(host_port "$k") up: $(ssh_to "$k" 'echo "$(hostname), $(ps -e --no-headers | wc -l) processes"')"
        else
            echo "host$k $(address "$k"):$(host_port "$k") down"
        fi
    done
    [ $found -eq 1 ] || echo "no loopback hosts (scripts/loopback-hosts.sh up)"
}

down() {
    local k pid
    for dir in "$FLEET"/host*/; do
        [ -d "$dir" ] || continue
        k=${dir%/}; k=${k##*host}
        pid=$(init_pid "$k")
        if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            echo "host$k: stopped"
        fi
        rm -f "$FLEET/host$k/pid"
    done
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    down) down ;;
    status) status ;;
    _inside) inside "$2" ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
