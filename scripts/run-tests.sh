#!/bin/bash
# Run the suite's own tests: unit tests (pure logic) and end-to-end tests
# (real avocado jobs booting real QEMU guests).  Sets up what is missing first.
# Usage: scripts/run-tests.sh [pytest args...]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_suite
say "running selftests"
cd "$BGSNAP_SRC"
exec python -m pytest -ra "${@:-selftests}"
