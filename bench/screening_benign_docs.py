"""False positives of injection screening on ordinary documents an agent reads as tool results.

    python bench/screening_benign_docs.py [--size 2500] [--show 3] [--no-model] [--set tune|heldout]
    python bench/screening_benign_docs.py --size 0      # whole files, as a coding agent reads them

The labelled sets (docs/screening.md) are mostly short prompts; what a coding agent sends through the gateway is
mostly long tool results: source files, READMEs, changelogs, package metadata, licences. This scans such text
found on the machine, none of it used in training (the model's benign documentation is package METADATA and
`pydoc_data.topics`), cut into `--size`-character chunks like tool results, and prints the share flagged per
source with the evidence that flagged it. Every chunk is benign: anything flagged is a false positive.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from otelgate.screening import Screener

# A coding agent reads whole files: Claude Code's Read tool returns up to 2 000 lines (about this many characters of
# ordinary source); --size 0 scans each file whole up to here.
WHOLE_FILE_CHARS = 256 * 1024


def chunks(text: str, size: int, most: int) -> Iterator[str]:
    for n, start in enumerate(range(0, max(1, len(text) - size // 2), size)):
        if n >= most:
            return
        yield text[start:start + size]


def read(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                return f.read()
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError):
        return ""


def corpora(size: int, which: str = "tune") -> dict[str, list[str]]:
    """`tune`: the sources the long-text policy and the rule fixes were checked against; `heldout`: other sources,
    kept apart to measure those choices once (then, read whole, used to diagnose whole-file false positives);
    `fresh`: sources neither used, to measure that."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    docs = sorted(Path("/usr/share/doc").glob("*/README*")) + sorted(Path("/usr/share/doc").glob("*/changelog*"))
    if which == "tune":
        sources = {
            "stdlib source (.py)": sorted(stdlib.glob("*.py")),
            "/usr/share/doc READMEs, changelogs": docs[:400],
            "site-packages docs (.md, .rst, .txt)": sorted(p for ext in ("md", "rst", "txt")
                                                           for p in site.glob(f"*/**/*.{ext}")),
            "/var/lib/dpkg/status": [Path("/var/lib/dpkg/status")],
        }
    elif which == "fresh":
        # Added after the held-out set, read as whole files, had been used to diagnose false positives (session 3,
        # docs/screening.md "Long texts"): sources neither set used, measured once.
        sources = {
            "Debian python3 packages (.py)": sorted(Path("/usr/lib/python3/dist-packages").glob("**/*.py"))[::4],
            "Perl modules (.pm)": sorted(p for root in ("/usr/share/perl", "/usr/share/perl5")
                                         for p in Path(root).glob("**/*.pm"))[::2],
            "READMEs, changelogs (the rest of /usr/share/doc)": docs[800:1200],
            "info manuals (/usr/share/info)": sorted(Path("/usr/share/info").glob("*.gz")),
            "Node package docs (.md)": sorted(Path("/usr/lib/node_modules").glob("**/*.md")),
        }
    else:
        sources = {
            "C headers (/usr/include)": sorted(Path("/usr/include").glob("*.h")),
            "man pages (man1, troff)": sorted(Path("/usr/share/man/man1").glob("*.gz"))[::40],
            "licences (/usr/share/common-licenses)": sorted(Path("/usr/share/common-licenses").glob("*")),
            "configuration (/etc/*.conf)": sorted(Path("/etc").glob("*.conf")),
            "JavaScript (/usr/share/javascript)": sorted(Path("/usr/share/javascript").glob("**/*.js")),
            "more READMEs, changelogs": docs[400:800],
        }
    out: dict[str, list[str]] = {}
    for name, paths in sources.items():
        texts: list[str] = []
        per_file = 400 if len(paths) == 1 else 3
        for path in paths[:400]:
            if not path.is_file():
                continue
            if size == 0 and len(paths) > 1:  # whole files, as an agent's file-reading tool returns them
                text = read(path)[:WHOLE_FILE_CHARS]
                texts += [text] if text.strip() else []
            else:
                texts += [c for c in chunks(read(path), size or 2500, per_file) if c.strip()]
        if texts:
            out[name] = texts
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2500,
                    help="characters per chunk (a tool result); 0: whole files (up to 256 KiB), as a coding "
                    "agent's file-reading tool returns them")
    ap.add_argument("--show", type=int, default=3, help="flagged chunks to print per source")
    ap.add_argument("--no-model", action="store_true", help="rules only")
    ap.add_argument("--set", choices=("tune", "heldout", "fresh"), default="tune", dest="which",
                    help="tune: sources the choices were checked on; heldout: other sources (since used to diagnose "
                    "whole-file false positives); fresh: sources neither used")
    args = ap.parse_args(argv)
    screener = Screener.from_packs(["builtin"], use_model=not args.no_model)
    total = flagged_total = 0
    print("| source | chunks | flagged | rate | evidence (most common) |\n|---|---:|---:|---:|---|")
    shown: list[str] = []
    for name, texts in corpora(args.size, args.which).items():
        evidence: Counter[str] = Counter()
        flagged = 0
        for text in texts:
            verdict = screener.scan(text)
            if verdict.flagged:
                flagged += 1
                evidence.update(verdict.rules[:2])
                if sum(1 for s in shown if s.startswith(name)) < args.show:
                    shown.append(f"{name}: {list(verdict.rules[:3])} {text[:160]!r}")
        total += len(texts)
        flagged_total += flagged
        common = ", ".join(f"{rule} ×{n}" for rule, n in evidence.most_common(3))
        print(f"| {name} | {len(texts)} | {flagged} | {100 * flagged / len(texts):.1f} % | {common} |")
    print(f"| all | {total} | {flagged_total} | {100 * flagged_total / max(1, total):.1f} % | |")
    if shown:
        print("\nflagged (false positives):\n" + "\n".join(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
