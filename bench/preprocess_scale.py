"""Throughput and peak memory of the text preprocess stage as the corpus grows, and identity with an older version.

Usage: python bench/preprocess_scale.py [--sizes 50 200 1000] [--baseline REV] [--baseline-sizes embedded 10 50]
[--whole-split-sizes 50] (writes bench/results/preprocess_scale.json)

Corpora are built offline from Python's bundled documentation (`pydoc_data.topics`, 465 KB, 79 topics) as the
clean stage would write them (`documents.jsonl`, one {"text": ...} per line): each topic normalised like clean does,
then copy after copy with its paragraphs in a seeded random order and about one word in 20 swapped with its
neighbour, so every document is unique (duplicates are dropped as clean would) and the text stays normalised. A
size is millions of UTF-8 bytes of document text; smaller corpora are prefixes of larger ones.

Each size runs the real stage, `python -m tasks.preprocess`, in a throw-away project whose params.yaml points
clean.out_dir at the corpus (default tokenizer: byte-level BPE, vocab 2048, trained on a sample of at most
`preprocess.tokenizer_train_mb` of the train split), in its own process, so its peak RSS (ru_maxrss from wait4) is its
own. MB/s is document bytes over the stage's wall time, process start included; MB per CPU second (user + system)
is the steadier figure on a shared machine, and each row records the load average before and after it. The time
split (reading and splitting, tokenizer training, encoding) and the tokenizer sample come from the stage's log lines.

With --baseline REV the stage of that git revision (exported with `git archive`) runs too, on the baseline sizes
(`embedded` is the default corpus, `embedded:pydoc` through ingest and clean), alternating which version goes first.
Every output file of both versions must have the same sha256 where the new stage's tokenizer sample holds the whole
train split (the embedded corpus, sizes under `tokenizer_train_mb`); on larger corpora the tokenizers differ by
design, so only the compression (bytes per token) is compared. The whole-split sizes run the new stage again with
`tokenizer_train_mb: null` (training on every train document, as before the sample): those outputs must equal the
baseline's, which checks that the encoding pass still writes the same bytes at scale.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.preprocess_scale")

SEED = 0
SWAP_EVERY = 20  # about one word in 20 is swapped with its neighbour
STAGE_TIMEOUT_S = 1800
# the stage's own log lines (tasks/preprocess.py) carry the time split
_TIMING = re.compile(r"preprocess: (read|tokenizer|encoded)\b.* in ([0-9.]+) s")
_SAMPLE = re.compile(r"preprocess: BPE tokenizer sample: (\d+) of (\d+) train documents, ([0-9.]+) of ([0-9.]+) MB")


def topics_normalised() -> list[list[str]]:
    """Return pydoc's topics as clean would keep them, each as its list of paragraphs."""
    from pydoc_data.topics import topics

    from dataprep.text_clean import normalize

    return [normalize(text)[0].split("\n\n") for _, text in sorted(topics.items())]


def perturbed(paragraphs: list[str], rng: random.Random) -> str:
    """Return the paragraphs in a random order with about one word in SWAP_EVERY swapped with its neighbour.

    Only words with no newline swap, and only with a neighbour on the same line: indentation, line breaks and
    single spaces stay where they were, so the document is still a fixed point of clean's normalisation."""
    words = "\n\n".join(rng.sample(paragraphs, len(paragraphs))).split(" ")
    for i in rng.sample(range(len(words) - 1), (len(words) - 1) // SWAP_EVERY):
        a, b = words[i], words[i + 1]
        if a and b and "\n" not in a and "\n" not in b:
            words[i], words[i + 1] = b, a
    return " ".join(words).strip()  # as clean does: a paragraph of indented code may now come first


def documents(seed: int = SEED) -> Iterator[str]:
    """Yield unique, normalised documents forever: perturbed copies of every pydoc topic in turn."""
    rng = random.Random(seed)
    sources = topics_normalised()
    seen: set[bytes] = set()
    while True:
        for paragraphs in sources:
            doc = perturbed(paragraphs, rng)
            digest = hashlib.sha256(doc.encode("utf-8")).digest()
            if digest not in seen:
                seen.add(digest)
                yield doc


def write_corpora(root: Path, sizes: list[float]) -> dict[float, dict]:
    """Write `root/<size>/documents.jsonl` for every size (MB of document text) in one pass; return their stats."""
    from config.catalog import CLEAN_FILE
    from dataprep.text_clean import normalize

    targets = sorted(sizes)
    stats = {mb: {"n_documents": 0, "n_text_bytes": 0} for mb in targets}
    open_sizes = list(targets)
    with contextlib.ExitStack() as stack:
        files = {mb: stack.enter_context(open(_mkdir(root / f"{mb:g}") / CLEAN_FILE, "w", encoding="utf-8"))
                 for mb in targets}
        for i, doc in enumerate(documents()):
            if i < 100:  # spot check: what clean writes is normalised
                assert normalize(doc)[0] == doc, "a generated document is not normalised"
            line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            n_bytes = len(doc.encode("utf-8"))
            for mb in open_sizes:
                files[mb].write(line)
                stats[mb]["n_documents"] += 1
                stats[mb]["n_text_bytes"] += n_bytes
            open_sizes = [mb for mb in open_sizes if stats[mb]["n_text_bytes"] < mb * 1e6]
            if not open_sizes:
                break
    for mb in targets:
        stats[mb]["file_bytes"] = (root / f"{mb:g}" / CLEAN_FILE).stat().st_size
    return stats


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_project(root: Path, clean_dir: Path | None, **preprocess) -> Path:
    """Write a project whose params read `clean_dir` (None: the default embedded corpus, through ingest/clean), with
    `preprocess` settings on top of the defaults."""
    data = {"preprocess": {"out_dir": "data/processed", "metrics_path": "metrics/preprocess.json", **preprocess}}
    if clean_dir is not None:
        data["clean"] = {"out_dir": str(clean_dir)}
    _mkdir(root)
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return root


def run_stage(project: Path, code: Path, stage: str = "preprocess") -> dict:
    """Run `python -m tasks.<stage>` of the code at `code` in `project`; return wall time, peak RSS and log."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    with open(project / f"{stage}.log", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (and any children it waited for)
        finally:
            proc.returncode = 0
        wall_s = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        raise RuntimeError(f"tasks.{stage} ({code}) exited {code_}:\n{stderr[-3000:]}")
    timings = {m.group(1): float(m.group(2)) for m in _TIMING.finditer(stderr)}
    sample = None
    if m := _SAMPLE.search(stderr):
        sample = {"n_documents": int(m.group(1)), "of_n_documents": int(m.group(2)), "mb": float(m.group(3)),
                  "of_mb": float(m.group(4))}
    return {"wall_s": wall_s, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "timings": timings, "tokenizer_sample": sample}


def output_digests(project: Path) -> dict[str, str]:
    """Return the sha256 of every output file of the stage (processed directory and metrics)."""
    files = sorted((project / "data" / "processed").rglob("*")) + [project / "metrics" / "preprocess.json"]
    digests = {}
    for path in (p for p in files if p.is_file()):
        with open(path, "rb") as fh:  # in chunks: a 1000 MB corpus has a 550 MB train.npy
            digests[str(path.relative_to(project))] = hashlib.file_digest(fh, "sha256").hexdigest()
    return digests


def export_revision(rev: str, into: Path) -> Path:
    """Export the tracked files of git revision `rev` into `into` (nothing in the repository changes)."""
    archive = into.with_suffix(".tar")
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into


def measure(name: str, version: str, project: Path, code: Path, n_text_bytes: int) -> dict:
    """Run the stage once and return its row."""
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    run = run_stage(project, code)
    meta = json.loads((project / "data" / "processed" / "meta.json").read_text())
    metrics = json.loads((project / "metrics" / "preprocess.json").read_text())
    row = {
        "corpus": name,
        "version": version,
        "corpus_mb": round(n_text_bytes / 1e6, 1),
        "wall_s": round(run["wall_s"], 1),
        "mb_per_s": round(n_text_bytes / 1e6 / run["wall_s"], 2),
        "cpu_s": round(run["cpu_s"], 1),  # user + system: less sensitive than wall time to a busy machine
        "mb_per_cpu_s": round(n_text_bytes / 1e6 / run["cpu_s"], 2),
        "peak_rss_mb": round(run["peak_rss_mb"]),
        "time_split_s": run["timings"],
        "tokenizer": meta["tokenizer"],
        "vocab_size": meta["vocab_size"],
        "tokenizer_sample": run["tokenizer_sample"],  # None: the stage trained on the whole split (or predates it)
        "n_tokens": sum(meta[s]["n_tokens"] for s in ("train", "val", "test")),
        "bytes_per_token": metrics["bytes_per_token"],  # train split: the compression the tokenizer reaches
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    log.info(json.dumps(row))
    return row


_POOL_TOKENIZER = None


def _pool_init(tokenizer_json: str) -> None:
    global _POOL_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: the processes are the parallelism
    from tokenizers import Tokenizer

    _POOL_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _pool_encode(batch: list[str]) -> list:
    import numpy as np

    from dataprep.tokenize import EOT, token_dtype

    dtype = token_dtype(_POOL_TOKENIZER)
    eot = np.array([_POOL_TOKENIZER.token_to_id(EOT)], dtype=dtype)
    return [np.concatenate((eot, np.array(enc.ids, dtype=dtype)))
            for enc in _POOL_TOKENIZER.encode_batch_fast(batch, add_special_tokens=False)]


def write_streams_with_pool(tok, path: Path, out: Path, cfg, n_processes: int) -> None:
    """The stage's encoding pass with a pool of processes (one tokenizer thread each) instead of threads."""
    import multiprocessing

    from dataprep.tokenize import BATCH_BYTES, SPLITS, TokenStreamWriter, batches, iter_documents, split_of, token_dtype

    docs = iter_documents(path)
    pending: list[list[str]] = []

    def tracked() -> Iterator[list[str]]:
        for batch in batches(docs, BATCH_BYTES // n_processes):
            pending.append(batch)
            yield batch

    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(TokenStreamWriter(out / f"{s}.npy", token_dtype(tok))) for s in SPLITS}
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(n_processes, _pool_init,
                                                                              (tok.to_str(),)))
        for arrays in pool.imap(_pool_encode, tracked()):
            for text, tokens in zip(pending.pop(0), arrays):
                writers[split_of(text, cfg.val_fraction, cfg.test_fraction)].write(tokens)


def encode_parallelism(corpus: Path, tokenizer_path: Path, work: Path, repeats: int = 2) -> dict:
    """Time the encoding pass on `corpus`: the tokenizer's own threads (the stage) against a process pool."""
    from tokenizers import Tokenizer

    from config.params import PreprocessParams
    from dataprep.tokenize import write_streams

    tok, cfg = Tokenizer.from_file(str(tokenizer_path)), PreprocessParams()
    n_text_bytes = sum(len(json.loads(line)["text"].encode("utf-8")) for line in corpus.open(encoding="utf-8"))
    arms = {"threads (encode_batch_fast)": lambda out: write_streams(tok, corpus, out, cfg),
            f"process pool ({os.cpu_count()})": lambda out: write_streams_with_pool(tok, corpus, out, cfg,
                                                                                     os.cpu_count() or 1)}
    best: dict[str, dict] = {}
    digests = {}
    for _ in range(repeats):  # alternate the arms, keep the best of each: the machine is shared
        for name, run in arms.items():
            out = _mkdir(work / "encode" / name.split()[0])
            t0, c0 = time.perf_counter(), os.times()
            run(out)
            wall, c1 = time.perf_counter() - t0, os.times()
            cpu = sum(c1[:4]) - sum(c0[:4])  # this process and its (waited-for) pool workers
            digests[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.npy"))}
            if name not in best or wall < best[name]["wall_s"]:
                best[name] = {"wall_s": round(wall, 2), "mb_per_s": round(n_text_bytes / 1e6 / wall, 2),
                              "cpu_s": round(cpu, 2), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    a, b = digests.values()
    result = {"corpus_mb": round(n_text_bytes / 1e6, 1), "repeats": repeats, "same_output": a == b, "arms": best}
    log.info("encode parallelism: %s", json.dumps(result))
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[50, 200, 1000], help="corpus sizes, MB of text")
    parser.add_argument("--baseline", help="git revision whose stage to compare with (speed, memory, identity)")
    parser.add_argument("--baseline-sizes", nargs="+", default=["embedded", "10", "50"],
                        help="corpora the baseline runs on: `embedded` or sizes in MB")
    parser.add_argument("--whole-split-sizes", type=float, nargs="*", default=[50],
                        help="baseline sizes the new stage also runs with tokenizer_train_mb: null, for identity")
    parser.add_argument("--parallel-mb", type=float, default=10,
                        help="corpus for timing threads against a process pool when encoding (0: skip)")
    parser.add_argument("--work-dir", type=Path, help="where corpora and projects go (default: a temporary dir)")
    args = parser.parse_args()

    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="preprocess_scale.", dir=args.work_dir))
    try:
        baseline_sizes = [float(s) for s in args.baseline_sizes if s != "embedded"] if args.baseline else []
        t0 = time.perf_counter()
        extra = [args.parallel_mb] if args.parallel_mb else []
        corpora = write_corpora(work / "corpora", sorted(set(args.sizes) | set(baseline_sizes) | set(extra)))
        log.info("corpora %s written in %.0f s", {f"{k:g}": v for k, v in corpora.items()}, time.perf_counter() - t0)
        code_of = {"new": REPO, "new, whole split": REPO}
        if args.baseline:
            code_of["baseline"] = export_revision(args.baseline, work / "baseline")
        rows: dict[str, list[dict]] = {v: [] for v in code_of}
        identity = []
        cases = [("embedded", None)] if args.baseline and "embedded" in args.baseline_sizes else []
        cases += [(f"{mb:g}", mb) for mb in sorted(set(args.sizes) | set(baseline_sizes))]
        for i, (name, mb) in enumerate(cases):
            versions = ["new"]
            if args.baseline and (mb is None or mb in baseline_sizes):
                versions.append("baseline")
                if mb in (args.whole_split_sizes or []):
                    versions.append("new, whole split")
            if i % 2:  # alternate which version runs first: the machine's load drifts
                versions.reverse()
            digests = {}
            for version in versions:
                project = work / f"{version.replace(', ', '-').replace(' ', '_')}-{name}"
                settings = {"tokenizer_train_mb": None} if version == "new, whole split" else {}
                if mb is None:  # the default corpus: ingest and clean it with the current code first
                    make_project(project, None, **settings)
                    for stage in ("ingest", "clean"):
                        run_stage(project, REPO, stage)
                    n_text_bytes = sum(len(json.loads(line)["text"].encode("utf-8")) for line in
                                       (project / "data" / "clean" / "documents.jsonl").open(encoding="utf-8"))
                else:
                    make_project(project, work / "corpora" / f"{mb:g}", **settings)
                    n_text_bytes = corpora[mb]["n_text_bytes"]
                row = measure(name, version, project, code_of[version], n_text_bytes)
                rows[version].append(row)
                digests[version] = output_digests(project), row["tokenizer_sample"]
                if version == "new" and mb is not None and not (work / "tokenizer.json").exists():
                    shutil.copy(project / "data" / "processed" / "tokenizer.json", work / "tokenizer.json")
                shutil.rmtree(project / "data" / "processed")
            if "baseline" in digests:
                theirs, _ = digests.pop("baseline")
                for version, (ours, sample) in digests.items():
                    # The tokenizers may differ only where the new stage trained on part of the train split.
                    expected = sample is None or sample["n_documents"] == sample["of_n_documents"]
                    same = ours == theirs
                    identity.append({"corpus": name, "version": version, "n_files": len(ours), "identical": same,
                                     "identity_expected": expected,
                                     "sha256": ours if same else {version: ours, "baseline": theirs}})
                    log.info("%s: outputs of %s and baseline %s%s", name, version, "identical" if same else "differ",
                             "" if expected else " (expected: the tokenizer sample is part of the train split)")
        parallelism = None
        if args.parallel_mb:
            parallelism = encode_parallelism(work / "corpora" / f"{args.parallel_mb:g}" / "documents.jsonl",
                                             work / "tokenizer.json", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import tokenizers

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python bench/preprocess_scale.py " + " ".join(sys.argv[1:]),
        # the stage measured as "new"; -dirty: with uncommitted edits
        "commit": subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "corpora": {f"{k:g}": v for k, v in corpora.items()},
        "rows": rows["new"],
        "baseline": {"revision": args.baseline, "rows": rows["baseline"]} if args.baseline else None,
        "whole_split_rows": rows["new, whole split"],
        "identity": identity,
        "encode_parallelism": parallelism,
        "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    out = REPO / "bench" / "results" / "preprocess_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out)
    if any(r["identity_expected"] and not r["identical"] for r in identity):
        sys.exit(1)


if __name__ == "__main__":
    main()
