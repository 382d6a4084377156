#!/bin/bash
# The CI profile (cfg/ci.cfg, docs/ci.md): sets up what is missing, runs the
# 'ci' test set on one QEMU build and writes JUnit and tmt results.
# Usage: scripts/ci-profile.sh [OUTPUT_DIR]      (default: $BGSNAP_HOME/ci)
#   BGSNAP_CI_BUILD=NAME   the QEMU build (default: system; see avocado bgsnap qemu-list)
#   BGSNAP_CI_TIMEOUT=S    job timeout in seconds (default: 1200)
# Writes OUTPUT_DIR/junit.xml, results.yaml (tmt), results.json, job (a
# link to avocado's job dir).  Exit status, from results.json, not avocado's:
#   0  every test PASS or CANCEL (predicted unsupported)
#   1  a FAIL: QEMU or the kernel (docs/verdicts.md), whatever else happened
#   2  no FAIL, but an ERROR, INTERRUPTED, SKIP or WARN, a test missing, a
#      leftover, or avocado itself failed: the environment or the harness
set -uo pipefail
. "$(dirname "$0")/lib.sh"
out=${1:-$BGSNAP_HOME/ci}
build=${BGSNAP_CI_BUILD:-system}
started=$(date +%s)
ensure_suite || exit 2
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
rm -f "$out/junit.xml" "$out/results.yaml" "$out/results.json" "$out/job"
# with side-by-side builds every test exists once per build: pick one
ref=ci
[ -f "$BGSNAP_HOME/qemu-builds.cfg" ] && ref=$build.ci
expected=$(avocado list "$ref" 2>/dev/null | grep -c '^avocado-vt ')
say "running the CI profile: avocado run $ref ($expected tests)"
avocado run "$ref" --job-timeout "${BGSNAP_CI_TIMEOUT:-1200}" \
    --xunit "$out/junit.xml" --xunit-job-name "avocado-bgsnap-ci" \
    --tmt "$out/results.yaml" --json "$out/results.json"
avocado_status=$?
status=0
python -m avocado_bgsnap.report.ci_status "$out/results.json" "$avocado_status" "$expected" \
    || status=$?
job=$(python3 -c 'import json,sys,os; print(os.path.dirname(json.load(open(sys.argv[1]))["debuglog"]))' \
      "$out/results.json" 2>/dev/null) && ln -sfn "$job" "$out/job"
echo "ci-profile: $(( $(date +%s) - started ))s; $out/junit.xml, $out/results.yaml, job ${job:-none}"
exit $status
