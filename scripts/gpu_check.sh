#!/usr/bin/env bash
# The prepared device check (scripts/gpu_check.py): GPU tests, full-size parity, eager and compiled benchmark, peak
# memory, at most ~8 minutes. Usage: scripts/gpu_check.sh --out DIR [--dry-run] [--budget SECONDS] [--parts ...]
set -uo pipefail
cd "$(dirname "$0")/.."
exec python3 -u scripts/gpu_check.py "$@"
