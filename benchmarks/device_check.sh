#!/usr/bin/env bash
# The GPU self-test in one call (see benchmarks/device_check.py): a JSON report and a readable
# summary in ./device-check/ unless --out says otherwise. Runs with $PYTHON (default python3).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/device_check.py" "$@"
