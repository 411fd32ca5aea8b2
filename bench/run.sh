#!/usr/bin/env bash
# One command for the side-by-side bench (docs/performance.md): `bench/run.sh [--quick] [--only a,b] ...`.
# Same as `python -m bench ...` from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m bench "$@"
