#!/usr/bin/env bash
# Installs the LiteLLM proxy into its own virtual environment, outside the repo, for the side-by-side bench.
# LiteLLM pins many packages (fastapi, pydantic, openai ...) that must not leak into otelgate's environment.
#   bench/peers/setup_litellm.sh            # -> $OTELGATE_BENCH_LITELLM_VENV (default ~/.cache/otelgate-bench/litellm)
# 1.108.7: its [proxy] extra installs; 1.110.2's does not (a pinned dependency is missing from PyPI).
set -euo pipefail
VENV="${OTELGATE_BENCH_LITELLM_VENV:-$HOME/.cache/otelgate-bench/litellm}"
VERSION="${LITELLM_VERSION:-1.108.7}"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm, sys; from importlib.metadata import version; sys.exit(version('litellm') != '$VERSION')" 2>/dev/null; then
  echo "$VENV/bin/litellm"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet "litellm[proxy]==$VERSION" uvloop >&2
echo "$VENV/bin/litellm"
