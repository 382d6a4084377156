#!/bin/bash
# One avocado run over N hosts with avocado's remote spawner, then the fleet
# report (docs/fleet.md).
#
#   scripts/fleet-run.sh [TEST ...]      # default: system.fleet (12 runs of one point)
#
# Hosts: BGSNAP_FLEET_CONF names an avocado config with '[spawner.remote]
# slots' (one JSON per host, aexpect.remote.remote_login arguments) and a
# setup_hook that activates the suite on the host; without it, the loopback
# hosts of scripts/loopback-hosts.sh are used (started when they are down).
# The remote hosts report to the status server at BGSNAP_STATUS_SERVER
# (default 127.0.0.1:8890): on a real fleet, an address of this machine they
# can reach.  One task per host at a time.  Loopback hosts this script
# started are stopped at its end.  Exit status: avocado's.
set -uo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
CONF=${BGSNAP_FLEET_CONF:-}
STATUS=${BGSNAP_STATUS_SERVER:-127.0.0.1:8890}
[ $# -gt 0 ] || set -- system.fleet

if [ -z "$CONF" ]; then
    # the loopback hosts: started here when down, and stopped again at the end
    if ! "$BGSNAP_SRC/scripts/loopback-hosts.sh" status | grep -q " up: "; then
        trap '"$BGSNAP_SRC/scripts/loopback-hosts.sh" down' EXIT
    fi
    "$BGSNAP_SRC/scripts/loopback-hosts.sh" up "${BGSNAP_FLEET_HOSTS:-2}" || exit 2
    CONF=$BGSNAP_HOME/fleet/remote.conf
fi
slots=$(python - "$CONF" <<'EOF'
import configparser, json, sys
conf = configparser.ConfigParser()
conf.read(sys.argv[1])
print(len(json.loads(conf.get("spawner.remote", "slots", fallback="[]"))))
EOF
)
[ "${slots:-0}" -gt 0 ] || { echo "$CONF: no [spawner.remote] slots" >&2; exit 2; }
say "avocado run over $slots host(s) (remote spawner, $CONF)"
avocado --config "$CONF" run --spawner remote --max-parallel-tasks "$slots" \
    --status-server-disable-auto --status-server-listen "$STATUS" --status-server-uri "$STATUS" \
    "$@"
rc=$?
job=$(readlink -f "$BGSNAP_HOME/results/latest")
say "fleet report of $job"
avocado bgsnap report --job "$job" --by host || true
exit $rc
