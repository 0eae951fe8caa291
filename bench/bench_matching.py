"""Rule matching: objects matched per second against 10, 100 and 1,000 rules.

Ours (``handlers.wildcard.PatternSet``: one compiled alternation per bucket)
against the plain loop over the rules with ``fnmatch.fnmatchcase`` that
samples use, on the same objects in the same run. Prints a table.

    .venv/bin/python bench/bench_matching.py [--objects 20000]
"""

from __future__ import annotations

import argparse
import fnmatch
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.cli.arguments import positive_int  # noqa: E402
from handlers.wildcard import PatternSet, parse_gcs_uri  # noqa: E402

BUCKET = "hospital-inbox"
MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "PT", "NM")


def make_rules(count: int) -> list[str]:
    """Realistic rule URIs: per site and modality, per study folder, per file family."""
    rules = []
    for index in range(count):
        site, modality = f"site{index // len(MODALITIES):03d}", MODALITIES[index % len(MODALITIES)]
        kind = index % 3
        if kind == 0:
            rules.append(f"gs://{BUCKET}/{site}/{modality}/**.dcm")
        elif kind == 1:
            rules.append(f"gs://{BUCKET}/{site}/{modality}/*/IMG?????.dcm")
        else:
            rules.append(f"gs://{BUCKET}/{site}/{modality}-*/*.dcm")
    return rules


def make_names(count: int, rules: int, seed: int = 7) -> list[str]:
    """Object names spread over the rules' sites, about a third matching no rule."""
    rng = random.Random(seed)
    sites = max(1, rules // len(MODALITIES))
    names = []
    for _ in range(count):
        site = f"site{rng.randrange(sites + 1):03d}"
        modality = rng.choice(MODALITIES)
        roll = rng.random()
        if roll < 0.33:
            names.append(f"{site}/{modality}/study{rng.randrange(999)}/series{rng.randrange(9)}/IMG{rng.randrange(99999):05d}.dcm")
        elif roll < 0.66:
            names.append(f"{site}/{modality}/study{rng.randrange(999)}/IMG{rng.randrange(99999):05d}.dcm")
        else:
            names.append(f"{site}/{modality}-{rng.randrange(99)}/notes{rng.randrange(99)}.txt")
    return names


def fnmatch_loop(uris: list[str], names: list[str]) -> list[int | None]:
    found = []
    for name in names:
        uri = f"gs://{BUCKET}/{name}"
        found.append(next((index for index, pattern in enumerate(uris) if fnmatch.fnmatchcase(uri, pattern)), None))
    return found


def ours(patterns: PatternSet, names: list[str]) -> list[int | None]:
    return [patterns.first_match(BUCKET, name) for name in names]


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=positive_int, default=20_000)
    parser.add_argument("--runs", type=positive_int, default=3, help="best of this many runs")
    args = parser.parse_args()

    print(f"{'rules':>6} | {'ours obj/s':>12} | {'fnmatch loop obj/s':>18} | {'speed-up':>8} | {'compile ms':>10} | matched")
    print("-" * 78)
    for count in (10, 100, 1000):
        uris = make_rules(count)
        names = make_names(args.objects, count)
        start = time.perf_counter()
        patterns = PatternSet([parse_gcs_uri(uri) for uri in uris])
        compile_ms = (time.perf_counter() - start) * 1000
        fnmatch_loop(uris, names[:100])  # warm fnmatch's pattern cache, as a long-lived instance would be
        ours_s = best_of(args.runs, lambda: ours(patterns, names))
        loop_names = names if count <= 100 else names[: max(1000, args.objects // 10)]
        loop_s = best_of(args.runs, lambda: fnmatch_loop(uris, loop_names))
        ours_rate, loop_rate = len(names) / ours_s, len(loop_names) / loop_s
        matched = sum(1 for index in ours(patterns, names) if index is not None)
        print(f"{count:>6} | {ours_rate:>12,.0f} | {loop_rate:>18,.0f} | {ours_rate / loop_rate:>7.1f}x | "
              f"{compile_ms:>10.1f} | {matched}/{len(names)}")
    print("\nfnmatch's '*' also matches '/', so its answers differ from the API's grammar; it is timed as the baseline only.")


if __name__ == "__main__":
    main()
