"""`python -m otelgate.evals CASES.yaml --agent ...` (the same as `otelgate eval`)."""

import sys

from otelgate.evals.cli import eval_main

sys.exit(eval_main(sys.argv[1:]))
