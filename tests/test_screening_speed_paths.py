"""The screening engine's speed shortcuts give exactly the results of the straightforward versions, for the
shipped rules and model and for made-up rule packs and weights (the shortcuts must not depend on what the current
rules or weights happen to be)."""

from __future__ import annotations

import random
import re
from array import array
from pathlib import Path

import pytest

from otelgate.screening import Screener, load_packs
from otelgate.screening.engine import Rule
from otelgate.screening.model import InjectionModel, load_model, window_features, windows
from otelgate.screening.normalize import normalize
from screeningref import plain_normalize

# Words that start, end or nearly match the heads and keywords of the made-up pack below, plus filler.
_VOCAB = ["ign", "ignore", "ignored", "ignore all", "igno", "ig", "do", "do not", "dont", "don", "set", "aside",
          "you", "you are", "are", "now", "a", "ab", "abc", "abcd", "abcde", "abx", "send", "sendd", "sen", "x", "y",
          "foo", "bar", "system", "pwn", "pwned", "pwnd", "the", "of", "über", "ueber", "rot13", "rot1", "e", "mail",
          "e-mail", "se", "s e t", "instructions", "previous", "12", "a1b", "---", "...", "\n", "\n\n", ":", "!",
          "Ignore", "DO NOT", "заб", "забудь"]

_PACK = r"""
rules:
  - id: t.prefix_heads
    category: test
    keywords: [ign*, igno*]
    patterns: ['\b(?:ign|ignore all|ignore)\w* (?:x|y|instructions)\b']
  - id: t.short_prefix
    category: test
    keywords: [pwn*, ab*]
    patterns: ['\b(?:pwn\w*|abc?)\b', '\bab(?:cd|x)']
  - id: t.spaced_keyword
    category: test
    keywords: [set aside, set]
    patterns: ['\bset aside\b']
  - id: t.trailing_space_head
    category: test
    keywords: [you]
    patterns: ['\byou are (?:now|a)\b', '\b(?:you|are)\b']
  - id: t.optional_last
    category: test
    keywords: [do, don, dont]
    patterns: ['\bdon?t?(?: not)? (?:foo|bar)\b']
  - id: t.headless_words
    category: test
    keywords: [foo]
    patterns: ['(?:^| )foo bar\b', 'x foo\b']
  - id: t.space_head
    category: test
    keywords: [foo, bar]
    patterns: ['\b foo']
  - id: t.folded
    category: test
    view: folded
    keywords: [send*, system]
    patterns: ['\b(?:send|sen)d? x', '(?:^|\n)\s*system\s*:', '!{1,3}']
  - id: t.always
    category: test
    patterns: ['\b(?:über|ueber|забудь)\b', '\babcde?\b']
  - id: t.nonascii
    category: test
    keywords: [über*, заб*, rot1*, e]
    patterns: ['\b(?:über|заб)\w*', '\brot1\d', '\be mail\b']
"""


def _texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.choice([0, 1, 2, 5, 20, 80, 400])
        out.append(rng.choice(["", " ", "  "]).join(rng.choice(_VOCAB) for _ in range(n)))
    return out


def _plain_rule_ids(rules: tuple[Rule, ...], folded: str, words: str) -> set[str]:
    tokens = set(words.split(" ")) if words else set()
    prefixes = {t[:4] for t in tokens}
    out = set()
    for rule in rules:
        if (rule.keywords or rule.prefixes) and not (tokens & rule.keywords or prefixes & rule.prefixes):
            continue
        if any(p.search(folded if rule.view == "folded" else words) for p in rule.patterns):
            out.add(rule.id)
    return out


def _check_rules(screener: Screener, texts: list[str]) -> int:
    hits = 0
    for text in texts:
        norm = normalize(text)
        got = [r.id for r in screener._matching_rules(norm)]
        expected = _plain_rule_ids(screener.rules, norm.folded, norm.words)
        assert set(got) == expected, (text[:200], sorted(set(got) ^ expected))
        # Order matters too (ties in the verdict keep it): rules with keywords first, in pack order.
        gated = [r.id for r in screener.rules if r.keywords or r.prefixes]
        always = [r.id for r in screener.rules if not (r.keywords or r.prefixes)]
        assert got == [i for i in gated + always if i in expected]
        hits += len(got)
    return hits


def test_rule_matching_is_exact_for_a_made_up_pack(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(_PACK, encoding="utf-8")
    screener = Screener(load_packs([str(pack)]), model=None)
    texts = [*_texts(1, 1500), "ignore all instructions", "pwn", "pwned", "ab", "abx", "set aside", "x foo",
                               "you are now", "dont foo", "d o n t foo", "\nsystem: x", "Über alles", "rot13",
                               "e-mail", "x  foo bar"]
    hits = _check_rules(screener, texts)
    assert hits > 1000  # the texts do exercise the rules


def test_rule_matching_is_exact_for_the_shipped_rules_on_word_soup() -> None:
    screener = Screener.from_packs(["builtin"], use_model=False)
    heads = sorted({h.strip() for r in screener.rules for hs in r.leads if hs for h in hs if h.strip()})
    keywords = sorted({k for r in screener.rules for k in r.keywords} | {p for r in screener.rules for p in r.prefixes})
    rng = random.Random(7)
    vocab = heads + keywords + [w + "x" for w in heads] + _VOCAB
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.choice([3, 30, 300]))) for _ in range(300)]
    assert _check_rules(screener, texts) > 300


def _plain_logits(model: InjectionModel, tokens: list[str]) -> list[float]:
    mask = (1 << model.bits) - 1
    return [model.bias + sum(model.weights[i] for i in window_features(tokens[s:e], mask))
            for s, e in windows(len(tokens))]


@pytest.mark.parametrize("seed", [0, 1])
def test_window_logits_equal_the_plain_feature_sums_for_any_weights(seed: int) -> None:
    shipped = load_model()
    assert shipped is not None
    rng = random.Random(seed)
    weights = array("f", (rng.gauss(0.0, 1.0) for _ in range(1 << 12)))
    model = InjectionModel(bias=rng.uniform(-2, 2), weights=weights, version="test", bits=12)
    vocab = [f"w{i}" for i in range(60)] + ["the", "a", "of"]
    for n in [0, 1, 2, 23, 24, 25, 47, 48, 49, 50, 71, 72, 73, 95, 96, 97, 119, 120, 121, 300, 1001]:
        for _ in range(3):
            tokens = [rng.choice(vocab) for _ in range(n)]
            if not tokens:
                continue
            assert model.window_logits(tokens) == pytest.approx(_plain_logits(model, tokens), abs=1e-9)
            assert shipped.window_logits(tokens) == pytest.approx(_plain_logits(shipped, tokens), abs=1e-9)


def test_trie_regex_reports_the_longest_item() -> None:
    from otelgate.screening.engine import _TokenIndex

    index = _TokenIndex(["ab", "abc", "abcde", "b", "x y", "x "])
    got = index.positions("abcd abcde ab b x y x abx")
    assert {k: sorted(v) for k, v in got.items()} == {"abc": [0], "abcde": [5], "ab": [11, 22], "b": [14],
                                                        "x y": [16], "x ": [20]}
    assert index.extensions["ab"] == frozenset({"ab", "abc", "abcde"})
    assert re.compile("x").pattern  # keep re imported for readers of the helpers above


# Patterns for the search shortcuts (first-character class, required characters): each must give the same yes/no
# as a plain search, on texts full of the characters involved.
_TRICKY = [r"(?:#{2,}\s*\(?|\[|<|\()\s*(?:system|sys)\s*(?:\)|\]|>|:)", r"!\[[^\]\n]{0,10}\]\(x\)",
           r"\bsend\b[^.\n]{0,20}?\bto\s+\w+@\w+", r"(?P<q>['\"])x(?P=q)", r"(?:a|\.)+b", r"(?:ab|cd)+e",
           r"(?:a?b|c)", r"(x|y)\1", r"(?:\(|\[)\d+", r"(?:<|>)=?", r"a{0}b|cd", r"#{2,}x|!", r"(?:x|y)*z",
           r"a@?b", r"a\@b", r"[@]b", r"a(?:@)b", r"(?i)A@B|<", r"(?:^|\n)x:", r"x(?<=\(x)", r"(?:\]|\[)\]",
           r"(?:-|\+)\d", r"\{|\}", r"a{2}@", r"(?:%|\$)\w+\.", r"(?:^|<)b", r"(?:\\|/)x",
           # Heads behind a lookbehind, and heads that end in a comma (override.vocative_to_ai).
           r"\b(?:(?<![^.!(])|(?<=[.!(] )|(?<=send ))(?:sys,|system,) ?x", r"\b(?<=@)(?:send|sys)\w*\b",
           r"\bsend, (?:to|me)"]
_PUNCT_VOCAB = ["#", "##", "###", "(", ")", "[", "]", "<", ">", ":", "!", "@", "'", '"', "x", "y", "z", "a", "b",
                "c", "d", "e", "ab", "cd", "sys", "system", "send", "to", "me", ".", "=", "\n", " ", "  ", "1", "-",
                "+", "%", "$", "\\", "/", "{", "}", "![", "](x)", "a@b", "\nx:", "'x'", "(x", "send to me@x", "aa@",
                "%x.", "(12", "[]]", "<b", ",", "sys,", "system,", "@send", ". sys, x", "(system,x", "send, me"]


def test_search_shortcuts_find_what_a_plain_search_finds() -> None:
    from otelgate.screening.engine import _fast_pattern, _first_chars, _required_chars, _search

    assert _first_chars(r"(?:#{2,}\s*\(?|\[|<|\()\s*x") == frozenset("#[<(")
    assert _first_chars(r"(?:a?b|c)") is None and _first_chars(r"(?:x|y)*z") is None
    assert _required_chars(r"a\@b") == {"@"} and not _required_chars(r"a@?b") and not _required_chars(r"[@]b")
    assert not _required_chars(r"a(?:@)b") and not _required_chars("(?i)a@b") and not _required_chars("a@|b")
    rng = random.Random(3)
    texts = ["".join(rng.choice(_PUNCT_VOCAB) for _ in range(rng.choice([1, 5, 30, 200]))) for _ in range(3000)]
    for src in _TRICKY:
        plain = re.compile(src)
        fast = _fast_pattern(src)
        needs = _required_chars(src)
        hits = 0
        for text in texts:
            expected = plain.search(text) is not None
            assert _search(fast, text) == expected, (src, text)
            if expected:
                hits += 1
                assert all(c in text[plain.search(text).start():] for c in needs), (src, text)  # type: ignore[union-attr]
        assert hits, src


def test_rule_matching_is_exact_for_punctuation_patterns(tmp_path: Path) -> None:
    rules = "\n".join(
        f"  - id: p.{i}\n    category: test\n    view: {view}\n    patterns: ['{src.replace(chr(39), chr(39) * 2)}']"
        + ("\n    keywords: [x, sys*, send]" if i % 3 == 0 else "")
        for i, (src, view) in enumerate((s, v) for s in _TRICKY for v in ("folded", "words")))
    pack = tmp_path / "punct.yaml"
    pack.write_text("rules:\n" + rules + "\n", encoding="utf-8")
    screener = Screener(load_packs([str(pack)]), model=None)
    rng = random.Random(4)
    vocab = [*_PUNCT_VOCAB, "x ", "sys ", "send "]
    texts = ["".join(rng.choice(vocab) for _ in range(rng.choice([1, 5, 30, 900]))) for _ in range(1500)]
    assert _check_rules(screener, texts) > 1000


def _plain_normalize(text: str) -> tuple[str, str, str]:
    """The plain version with leetspeak folded as the engine has shipped it."""
    return plain_normalize(text, leet=_runs_leet)


def _runs_leet(text: str) -> str:
    """Leetspeak folding as the engine has shipped it (commit 8b9f456): the token regex runs on the tokens around
    each run of digits or @$| that touches a letter. (The bare token regex also folds tokens in which a letter and
    a digit are only joined by "_" or "!", such as "a_1" or "ignore!$"; the engine never did.)"""
    from otelgate.screening import normalize as nz

    out: list[str] = []
    last = 0
    for m in re.finditer(r"[0-9@$|]+", text):
        a, b = m.start(), m.end()
        if a < last:
            continue
        if a > 0 and "a" <= text[a - 1] <= "z":
            start = a - 1
        elif b < len(text) and "a" <= text[b] <= "z":
            start = a
        else:
            continue
        while start > last and text[start - 1] in "abcdefghijklmnopqrstuvwxyz0123456789_@$!|":
            start -= 1
        end = re.compile(r"[\w@$!|]*").match(text, start).end()  # type: ignore[union-attr]
        out.append(text[last:start])
        out.append(nz._LEET_TOKEN_RE.sub(nz._fold_leet, text[start:end]))
        last = end
    return "".join(out) + text[last:]


_NORM_VOCAB = ["ignore", "1gn0r3", "$y$tem", "pr0mpt!", "a1b2", "12", "3.11", "x|y", "|", "!", "@", "$", "h4ck",
               "i g n o r e", "i.g.n.o.r.e", "a-b-c", "a_b_c", "_ _ _", "a / b / c", "x*y*z", "e.g.", "“quoted”",
               "—", "…", "’s", "Straße", "ΣΑΣ", "іgnоrе", "все", "ｉｇｎｏｒｅ", "ig\u200bnore", "\U000e0041\U000e0042",
               "x\u0301", " ", "  ", "\n", "\t", "a", "b", "c", "1", "0x1f", "l33t", "\u00a0", "Ǆ", "ﬀ", "𝐢𝐠𝐧"]


def test_normalisation_equals_the_plain_version_on_evasion_soup() -> None:
    rng = random.Random(5)
    for _ in range(2500):
        parts = [rng.choice(_NORM_VOCAB) for _ in range(rng.choice([1, 3, 10, 60]))]
        text = "".join(p + rng.choice(["", " ", " ", "\n", ".", "-"]) for p in parts)
        norm = normalize(text)
        assert (norm.folded, norm.words, norm.hidden) == _plain_normalize(text), text


def test_shared_tokens_are_the_split_words_view() -> None:
    rng = random.Random(6)
    texts = ["", " ", "...", "a", *_texts(2, 300), *("".join(rng.choice(_NORM_VOCAB) + " " for _ in range(20))
                                                    for _ in range(300))]
    for text in texts:
        norm = normalize(text)
        if norm.tokens is not None:
            assert norm.tokens == (norm.words.split(" ") if norm.words else []), text
