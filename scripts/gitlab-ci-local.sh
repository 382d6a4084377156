#!/bin/bash
# Runs the GitLab job of .gitlab-ci.yml (docs/ci.md) on this host with
# gitlab-ci-local: no GitLab, no runner, no Docker.  Installs the pinned
# gitlab-ci-local into $BGSNAP_HOME/tools/gitlab-ci-local if missing.
# Usage: scripts/gitlab-ci-local.sh [JOB] [GITLAB_CI_LOCAL_OPTION...]  (JOB: bgsnap-ci)
#   --force-shell-executor: the job's script runs here, in the checkout,
#     although the job names a Docker image; gitlab-ci-local's state (the
#     job's log, its artifacts) goes to $BGSNAP_HOME/gitlab-ci-local.
# Exit status: 0 the job passed, 1 it failed, 2 it failed with an allowed
# exit code (GitLab's warning: allow_failure.exit_codes), 3 this script or
# gitlab-ci-local could not run.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
# 4.74.0 and later use Set.prototype.union (Node 22); this one runs on Node 20
GCL_VERSION=4.73.0
job=bgsnap-ci
case ${1:-} in ""|-*) ;; *) job=$1; shift;; esac
for tool in node npm git rsync; do
    command -v "$tool" >/dev/null || { echo "gitlab-ci-local.sh: '$tool' not found (apt-get install ${tool/node/nodejs})" >&2; exit 3; }
done
prefix=$BGSNAP_HOME/tools/gitlab-ci-local
gcl=$prefix/node_modules/.bin/gitlab-ci-local
if [ "$("$gcl" --version 2>/dev/null)" != "$GCL_VERSION" ]; then
    say "installing gitlab-ci-local $GCL_VERSION into $prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        "gitlab-ci-local@$GCL_VERSION" || exit 3
fi
cd "$BGSNAP_SRC" || exit 3
state=$(realpath -m --relative-to=. "$BGSNAP_HOME/gitlab-ci-local")   # relative to --cwd
case $state in ../*) echo "gitlab-ci-local.sh: BGSNAP_HOME must be inside the checkout for gitlab-ci-local's --state-dir" >&2; exit 3;; esac
mkdir -p "$prefix/home" || exit 3
# what the job leaves in the checkout: kept as artifacts under $state, removed here
made=()
for d in ci-results; do [ -e "$d" ] || made+=("$d"); done
say "gitlab-ci-local $GCL_VERSION: job $job, shell executor, state in $state"
out=$(mktemp) || exit 3
trap 'rm -rf "$out" "${made[@]}"' EXIT
"$gcl" --state-dir "$state" --home "$prefix/home" \
    --force-shell-executor --no-color --timestamps "$@" "$job" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
# the summary line, not gitlab-ci-local's status: it exits 0 when a job with
# allow_failure.exit_codes fails with any other code (Executor.getFailed
# takes the exit_codes object for allow_failure: true)
if grep -q "^ FAIL .* $job *\$" "$out"; then status=1
elif grep -q "^ WARN .* $job  pre_script\$" "$out"; then status=2
elif grep -q "^ PASS .* $job *\$" "$out"; then status=0
else echo "gitlab-ci-local.sh: no summary line for $job (gitlab-ci-local exit $status)" >&2; status=3
fi
echo "gitlab-ci-local.sh: exit $status; the job's log and artifacts: $state/output/$job.log, $state/artifacts/$job/"
exit "$status"
