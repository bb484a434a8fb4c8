"""Speed and memory of `evaluation.memorization.SpanIndex` on a ~100 MB training text, and whether it finds what it must.

Usage: python bench/memorization_index.py [--mb 100] [--compare-mb 10]   (writes bench/results/memorization_index.json)

The corpus is built offline from Python's bundled documentation (`pydoc_data.topics`, 465 KB, 79 topics): copy
after copy of every topic with its paragraphs in a seeded random order and about one word in 20 swapped with its
neighbour, so documents are near-duplicates but not exact copies (as crawled text is), and it is not pure ASCII
(curly quotes, dashes: 2 bytes per character in the index). The index is built with min_chars=64 and queried with
(a) 100 samples of random corpus words around a verbatim cut of 64 to 400 characters of a training document: all
must be found, with the longest span equal to a brute-force reference (every occurrence of the cut in the corpus,
extended character by character; this assumes the longest span runs through the cut, which random words around it
make near certain), and (b) 100 samples of random corpus words only: none may be found. Queries are a stress case
here: a cut recurs in up to ~215 copies, so each sample has hundreds of true training occurrences to extend.
Wall times move with the load of the shared machine; CPU times and the load average are recorded next to them.

Each corpus size runs in a fresh process, so its peak RSS (ru_maxrss) is its own: the whole process (corpus
strings included), and the build's own rise above the RSS before building (Linux: /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import random
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.memorization_index")

MIN_CHARS = 64
N_SAMPLES = 100
SAMPLE_CHARS = 500
SEED = 0


def corpus(mb: float, seed: int = SEED) -> list[str]:
    """Return training documents totalling about `mb` million characters: perturbed copies of pydoc's topics."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    sources = [text.split("\n\n") for text in topics.values()]
    docs, total, target = [], 0, int(mb * 1e6)
    while total < target:
        for paragraphs in sources:
            words = "\n\n".join(rng.sample(paragraphs, len(paragraphs))).split(" ")
            for i in rng.sample(range(len(words) - 1), (len(words) - 1) // 20):
                words[i], words[i + 1] = words[i + 1], words[i]
            docs.append(" ".join(words))
            total += len(docs[-1])
            if total >= target:
                break
    return docs


def random_words(rng: random.Random, vocabulary: list[str], n_chars: int) -> str:
    """Return random vocabulary words joined by spaces, about `n_chars` characters long."""
    words, length = [], 0
    while length < n_chars:
        words.append(rng.choice(vocabulary))
        length += len(words[-1]) + 1
    return " ".join(words)[:n_chars]


def planted_samples(docs: list[str], vocabulary: list[str], rng: random.Random) -> list[tuple[str, int, int]]:
    """Return (sample, start, length) of samples with a verbatim cut of a training document inside random words."""
    samples = []
    for i in range(N_SAMPLES):
        length = MIN_CHARS if i % 10 == 0 else rng.randint(MIN_CHARS, 400)  # every tenth exactly at the threshold
        doc = rng.choice([d for d in rng.sample(docs, 8) if len(d) > length] or [max(docs, key=len)])
        at = rng.randrange(len(doc) - length)
        before = random_words(rng, vocabulary, rng.randint(0, SAMPLE_CHARS - length))
        after = random_words(rng, vocabulary, max(SAMPLE_CHARS - length - len(before), 0))
        samples.append((f"{before} {doc[at : at + length]} {after}", len(before) + 1, length))
    return samples


def reference_longest(joined: str, sample: str, start: int, length: int) -> int:
    """Return the longest verbatim span through the planted cut: every occurrence of the cut in the joined corpus,
    extended both ways a character at a time (the "\\x00" separators stop it, samples hold none)."""
    cut, best, at = sample[start : start + length], 0, joined.find(sample[start : start + length])
    while at >= 0:
        left = 0
        while left < start and at - left - 1 >= 0 and joined[at - left - 1] == sample[start - left - 1]:
            left += 1
        right = 0
        end = start + length
        while end + right < len(sample) and at + length + right < len(joined) \
                and joined[at + length + right] == sample[end + right]:
            right += 1
        best = max(best, left + length + right)
        at = joined.find(cut, at + 1)
    return best


def _rss_mb() -> float:
    """Return the current resident set size in MB (Linux), else the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mb() -> float | None:
    """Return the resident high-water mark since the last reset, in MB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_size(mb: float) -> dict:
    """Build the corpus and the index in this process, query it, and return the measurements."""
    from evaluation.memorization import SpanIndex, memorization

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    docs = corpus(mb)
    n_chars = sum(len(d) for d in docs)
    log.info("%.0f MB: %d documents, %d characters, made in %.1f s", mb, len(docs), n_chars, time.perf_counter() - t0)
    rss_before = _rss_mb()
    try:  # reset VmHWM so that it measures the build alone
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    t0, cpu0 = time.perf_counter(), time.process_time()
    index = SpanIndex.build(docs, MIN_CHARS)
    build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    hwm = _hwm_mb() if hwm_reset else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    log.info("built in %.2f s, index %.0f MB", build_s, index.nbytes / 1e6)

    rng = random.Random(SEED + 1)
    vocabulary = sorted({w for d in docs[:79] for w in d.split() if w.isalpha()})  # not table borders
    planted = planted_samples(docs, vocabulary, rng)
    random_only = [random_words(rng, vocabulary, SAMPLE_CHARS) for _ in range(N_SAMPLES)]
    timings = {}
    for name, samples in (("planted", [s for s, _, _ in planted]), ("random", random_only)):
        times, cpu_times = [], []
        for _ in range(3):
            t0, cpu0 = time.perf_counter(), time.process_time()
            result = memorization(samples, index)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - cpu0)
        timings[name] = (min(times), min(cpu_times), result)
        log.info("query %s: %d samples in %.3f s (best of 3; CPU %.3f s)", name, len(samples), min(times),
                 min(cpu_times))

    joined = "\x00".join(docs)
    planted_result = timings["planted"][2]
    expected = [reference_longest(joined, s, start, length) for s, start, length in planted]
    measured = [row["longest_chars"] for row in planted_result["samples"]]
    n_exact = sum(m == e for m, e in zip(measured, expected))
    random_result = timings["random"][2]
    row = {
        "corpus_mb": round(n_chars / 1e6, 1),
        "n_documents": len(docs),
        "index_mb": round(index.nbytes / 1e6, 1),
        "build_s": round(build_s, 2),
        "build_cpu_s": round(build_cpu_s, 2),
        "query_planted_s": round(timings["planted"][0], 4),
        "query_planted_cpu_s": round(timings["planted"][1], 4),
        "query_random_s": round(timings["random"][0], 4),
        "query_random_cpu_s": round(timings["random"][1], 4),
        "load_average_1min": round(os.getloadavg()[0], 2),  # the machine is shared: wall times move with it
        "peak_rss_mb": round(peak_rss, 0),
        "rss_before_build_mb": round(rss_before, 0),
        "build_rss_rise_mb": round(hwm - rss_before, 0) if hwm is not None else None,
        "planted": {"n_samples": len(planted), "detected": planted_result["memorized_samples"],
                    "longest_exact": n_exact, "planted_chars_min_max": [MIN_CHARS, max(p[2] for p in planted)],
                    "longest_chars_max": planted_result["memorization_longest_chars"]},
        "random": {"n_samples": len(random_only), "detected": random_result["memorized_samples"],
                   "longest_chars_max": random_result["memorization_longest_chars"]},
    }
    log.info(json.dumps(row))
    return row


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="corpus size, millions of characters")
    parser.add_argument("--compare-mb", type=float, default=10, help="a smaller corpus for comparison (0: none)")
    args = parser.parse_args()
    sizes = [mb for mb in (args.compare_mb, args.mb) if mb > 0]
    context = multiprocessing.get_context("spawn")  # a fresh process per size: its own peak RSS
    rows = []
    for mb in sizes:
        with context.Pool(1) as pool:
            rows.append(pool.apply(run_size, (mb,)))
    ok = all(r["planted"]["detected"] == r["planted"]["longest_exact"] == N_SAMPLES and r["random"]["detected"] == 0
             for r in rows)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "min_chars": MIN_CHARS, "sample_chars": SAMPLE_CHARS,
              "all_detected_exact_and_no_false": ok, "rows": rows}
    out = REPO / "bench" / "results" / "memorization_index.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s (all correct: %s)", out.relative_to(REPO), ok)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
