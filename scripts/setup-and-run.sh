#!/bin/bash
# Set everything up on a Debian 12/13 host and run the main job:
# Debian packages, the virtualenv, the embedded guest, Avocado-VT (offline),
# the host check, then 'avocado run' of the default test.
# Usage: scripts/setup-and-run.sh [TEST-REFERENCE...]   (default: bgsnap.basic.1g)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
started=$(date +%s)
ensure_suite
say "checking the host"
avocado bgsnap host-check
# the kernel's UFFD-WP without a guest (seconds); every job then carries its
# result (bgsnap-uffd-check.json); a FAIL is the kernel's, not a setup error
avocado bgsnap uffd-check || say "the UFFD-WP self-check FAILed a case: see above (docs/uffd-check.md)"
say "running the main job"
status=0
avocado run "${@:-bgsnap.basic.1g}" || status=$?
say "job results: $BGSNAP_HOME/results/latest  (avocado bgsnap summary shows the figures)"
avocado bgsnap summary || true
echo "setup-and-run took $(( $(date +%s) - started ))s"
exit $status
