"""Bad input, each through the real command line (`python -m tasks.<stage>`, as DVC runs it): a non-zero exit and
one line naming the problem, never a traceback.

`CASES` is also read by `bench/bad_inputs.py`, which prints the table of cases for BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT, TINY, TINY_IMAGE, Project, merge


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # the stage command line run
    expect: str  # a substring of the one-line error
    setup: Callable[[Project], None]  # writes params.yaml and inputs; may run earlier stages
    limit_file_size: int | None = None  # bytes: a "disk" that fills up during the write


def write_params(project: Project, overrides: dict, base: dict = TINY) -> None:
    (project.root / "params.yaml").write_text(yaml.safe_dump(merge(base, overrides), sort_keys=False))


def text_params(**overrides):
    return lambda p: write_params(p, overrides)


def image_params(overrides: dict, name: str = "dcgan"):
    merged = merge(TINY_IMAGE, overrides)
    merged["model"] = {**merged["model"], "name": name}
    return merge(TINY, merged)


def raw_params(text: str):
    return lambda p: (p.root / "params.yaml").write_text(text)


def inputs(p: Project) -> Path:
    path = p.root / "data" / "inputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def with_file(name: str, data: bytes, **overrides):
    def setup(p: Project) -> None:
        (inputs(p) / name).write_bytes(data)
        write_params(p, merge({"ingest": {"sources": [f"data/inputs/{name}"]}}, overrides))
    return setup


def symlink_loop(p: Project) -> None:
    loop = inputs(p) / "loop"
    loop.mkdir()
    (loop / "self").symlink_to(loop, target_is_directory=True)
    write_params(p, {"ingest": {"sources": ["data/inputs/loop"]}})


def fifo_in_inputs(p: Project) -> None:
    (inputs(p) / "notes.txt").write_text("Some notes.\n\nMore notes.\n")
    os.mkfifo(inputs(p) / "pipe.txt")  # reading it blocks until a writer comes: DVC would hang hashing it
    write_params(p, {"ingest": {"sources": ["embedded:pydoc"]}})  # not even a source: DVC still hashes inputs_dir


def dangling_symlink(p: Project) -> None:
    (inputs(p) / "gone.txt").symlink_to(inputs(p) / "deleted.txt")
    write_params(p, {"ingest": {"sources": ["data/inputs"]}})


def image_folder(files: dict[str, bytes], name: str = "dcgan", **overrides):
    def setup(p: Project) -> None:
        folder = inputs(p) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        write_params(p, {}, image_params(overrides, name))
    return setup


def image_array(arrays: dict[str, np.ndarray], source: str, name: str = "dcgan", **np_kw):
    def setup(p: Project) -> None:
        path = inputs(p) / source
        if source.endswith(".npz"):
            np.savez(path, **arrays)
        else:
            np.save(path, arrays["x"], **np_kw)
        write_params(p, {}, image_params({"ingest": {"image_sources": [f"data/inputs/{source}"]}}, name))
    return setup


def closed_port() -> int:
    """A local port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def after(stages: tuple[str, ...], setup: Callable[[Project], None]):
    """Run `setup`, then the given earlier stages in-process, so the failing stage gets its inputs."""
    def run(p: Project) -> None:
        setup(p)
        import importlib

        from config.params import load_params

        params = load_params(p.root / "params.yaml")
        for name in stages:
            getattr(importlib.import_module(f"tasks.{name}"), name)(params)
    return run


def corpus(p: Project) -> None:
    p.write_corpus()


def corpus_then(**overrides):
    return lambda p: (corpus(p), write_params(p, overrides))


def labelled_pngs(n: int = 12) -> dict[str, bytes]:
    import io

    from PIL import Image

    out = {}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(buf, format="PNG")
        out[f"{'ab'[i % 2]}/{i}.png"] = buf.getvalue()
    return out


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path.endswith("missing.txt"):
            self.send_error(404)
            return
        threading.Event().wait(5)  # longer than ingest.timeout_s
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@functools.cache
def http_base() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def url(path: str, **overrides):
    return lambda p: write_params(p, merge({"ingest": {"sources": [f"{http_base()}/{path}"], "timeout_s": 1}},
                                           overrides))


CASES = [
    # params.yaml
    Case("malformed YAML", "ingest", "malformed YAML at line", raw_params("ingest: [unclosed\n")),
    Case("params.yaml is a list", "ingest", "expected a mapping of sections", raw_params("- ingest\n")),
    Case("params.yaml is empty", "ingest", "params.yaml is empty", raw_params("# nothing here\n")),
    Case("params.yaml is missing", "train", "params file not found",
         lambda p: (p.root / "params.yaml").unlink(missing_ok=True)),
    Case("lora for a generator without it", "train", "supported for the gpt generator only",
         text_params(model={"name": "lstm", "lora": {"r": 4}})),
    Case("held-out fractions too large", "preprocess", "preprocess.val_fraction: Input should be less than 0.5",
         text_params(preprocess={"val_fraction": 0.6, "test_fraction": 0.5})),
    Case("heads that do not divide the width", "train", "model.gpt: n_embd (30) must be divisible by n_head (4)",
         text_params(model={"gpt": {"n_embd": 30, "n_head": 4}})),
    Case("unknown personal-data policy", "clean", "clean.pii", text_params(clean={"pii": "erase"})),
    Case("unknown tokenizer", "preprocess", "preprocess.tokenizer", text_params(preprocess={"tokenizer": "wordpiece"})),
    Case("unknown precision", "train", "train.precision", text_params(train={"precision": "fp8"})),
    Case("diffusion channels not divisible into groups", "train", "must be multiples of norm_num_groups (8)",
         lambda p: write_params(p, {}, image_params({"model": {"ddpm": {"block_out_channels": [30, 60],
                                                                         "norm_num_groups": 8}}}, "ddpm"))),
    Case("unknown section", "ingest", "trian: unknown key; allowed keys:", text_params(trian={"lr": 1})),
    Case("unknown nested key", "train", "train.max_step: unknown key", text_params(train={"max_step": 5})),
    Case("wrong type", "train", "train.max_steps: Input should be a valid integer", text_params(train={"max_steps": "many"})),
    Case("out-of-range value", "train", "train.lr: Input should be greater than 0", text_params(train={"lr": -1})),
    Case("unknown generator", "ingest", "model.name: 'gan' is not allowed; allowed values:", text_params(model={"name": "gan"})),
    Case("metric of the other modality", "register", "register.promote_metric: 'bleu' is not a metric of image generators",
         lambda p: write_params(p, {}, image_params({"register": {"promote_metric": "bleu"}}, "vae"))),
    Case("bad cron", "ingest", "flow.cron: expected a 5-field cron expression", text_params(flow={"cron": "every day"})),
    Case("device that is not there", "train", "train.device: 'cuda' is not available on this machine",
         after(("ingest", "clean", "preprocess"), corpus_then(train={"device": "cuda"}))),
    # text sources
    Case("missing source path", "ingest", "no such file or directory", text_params(ingest={"sources": ["data/inputs/nope.txt"]})),
    Case("empty directory", "ingest", "directory has no .jsonl/.md/.txt files",
         lambda p: (inputs(p) / "empty").mkdir() or write_params(p, {"ingest": {"sources": ["data/inputs/empty"]}})),
    Case("only a 0-byte file", "ingest", "the sources yielded no documents (1 empty file skipped)",
         with_file("empty.txt", b"")),
    Case("binary file given as text", "ingest", "is not valid UTF-8", with_file("photo.txt", b"\x89PNG\r\n\x1a\n\x00\xff")),
    Case("invalid UTF-8", "ingest", "is not valid UTF-8 (byte 1", with_file("latin1.txt", "héllo wörld".encode("latin-1"))),
    Case("malformed JSON line", "ingest", "corpus.jsonl:2: not valid JSON", with_file("corpus.jsonl", b'{"text": "a"}\n{oops\n')),
    Case("JSON line without the text field", "ingest", "expected an object with a string field 'text'",
         with_file("corpus.jsonl", b'{"body": "a"}\n')),
    Case("archive given as a source", "ingest", "unsupported file type '.zip'", with_file("data.zip", b"PK\x03\x04")),
    Case("symlink loop", "ingest", "directory has no .jsonl/.md/.txt files", symlink_loop),
    Case("a named pipe among the inputs", "ingest", "data/inputs/pipe.txt is a named pipe (FIFO): DVC and ingest "
         "cannot read it", fifo_in_inputs),
    Case("a dangling symlink among the inputs", "ingest", "data/inputs/gone.txt is a symlink to a missing target",
         dangling_symlink),
    Case("a 50 MB single line", "clean", "the corpus is empty after cleaning",
         after(("ingest",), with_file("huge.txt", b"x" * 50_000_000))),
    Case("unknown embedded corpus", "ingest", "unknown embedded corpus", text_params(ingest={"sources": ["embedded:wiki"]})),
    Case("URL that 404s", "ingest", "HTTP 404", url("missing.txt")),
    Case("URL that times out", "ingest", "could not fetch", url("slow.txt")),
    Case("stage run before its inputs exist", "train", "does not exist: run the stages before this one first", text_params()),
    # images
    Case("folder with no images", "ingest", "directory has no image files", image_folder({"notes.txt": b"hello"})),
    Case("only corrupt images", "clean", "no images left after cleaning: 2 in, 2 undecodable",
         after(("ingest",), image_folder({"a.png": b"\x89PNG broken", "b.jpg": b"\xff\xd8 not a jpeg"}))),
    Case("array of the wrong shape", "ingest", "expected an array of shape (N, H, W)",
         image_array({"x": np.zeros((4, 8), dtype=np.uint8)}, "flat.npy")),
    Case("pixel values out of range", "ingest", "expected uint8 pixels or floats in [0, 1]",
         image_array({"x": np.full((4, 8, 8), 3.5)}, "hot.npy")),
    Case("npz without the image array", "ingest", "no array 'image'",
         image_array({"pixels": np.zeros((4, 8, 8), dtype=np.uint8)}, "set.npz")),
    Case("pickled object array", "ingest", "not a readable numpy array file",
         image_array({"x": np.array([{"a": 1}] * 4, dtype=object)}, "objects.npy", allow_pickle=True)),
    Case("labelled and unlabelled sources mixed", "ingest", "label all of them or none",
         lambda p: (image_folder(labelled_pngs())(p), np.save(inputs(p) / "more.npy", np.zeros((3, 8, 8), np.uint8)),
                    write_params(p, {}, image_params({"ingest": {"image_sources": ["data/inputs/images",
                                                                                   "data/inputs/more.npy"]}})))),
    Case("conditional generator on unlabelled images", "train", "cdcgan is class-conditional but the data has 0 classes",
         after(("ingest", "clean", "preprocess"),
               image_array({"x": np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8)}, "x.npy",
                           name="cdcgan"))),
    # limits that fail fast, before anything is allocated or trained
    Case("a batch far beyond memory", "train", "with train.batch_size=10000000 needs about",
         after(("ingest", "clean", "preprocess"), corpus_then(train={"batch_size": 10_000_000}))),
    Case("an RNN batch beyond memory", "train", "model.lstm.block_size=16 with train.batch_size=100000000 needs",
         after(("ingest", "clean", "preprocess"),
               corpus_then(model={"name": "lstm", "lstm": {"block_size": 16}}, train={"batch_size": 100_000_000}))),
    Case("a window longer than the training text", "train", "model.lstm.block_size=1000000 is longer than the training text",
         after(("ingest", "clean", "preprocess"),
               corpus_then(model={"name": "lstm", "lstm": {"block_size": 1_000_000}}))),
    Case("tracking server not answering", "train", "register.tracking_uri: no MLflow server answers at",
         after(("ingest", "clean", "preprocess"),
               lambda p: corpus_then(register={"tracking_uri": f"http://127.0.0.1:{closed_port()}"})(p))),
    Case("tracking server not answering at register", "register", "register.tracking_uri: no MLflow server answers",
         lambda p: write_params(p, {"register": {"tracking_uri": f"http://127.0.0.1:{closed_port()}"}})),
    # the disk fills up during a write (RLIMIT_FSIZE: writes past the limit fail with EFBIG)
    Case("disk full during a write", "ingest", "no space left to write",
         text_params(ingest={"sources": ["embedded:pydoc"]}), limit_file_size=100_000),
]


def run_stage_cli(root: Path, stage: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("GENPIPE_DEBUG", "GENPIPE_LOCK_TOKEN"):
        env.pop(name, None)

    def limit() -> None:
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit, check=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(project, case):
    case.setup(project)
    proc = run_stage_cli(project.root, case.stage, case.limit_file_size)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: {case.stage}: ") and case.expect in errors[0], errors[0]


def test_there_are_at_least_forty_five_cases():
    assert len(CASES) >= 45 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("setup", [fifo_in_inputs, dangling_symlink])
def test_preflight_refuses_special_files_before_dvc_reads_them(project, setup):
    setup(project)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "cli.preflight"], cwd=project.root, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: preflight: data/inputs/") and line.endswith("; remove it")


def test_preflight_passes_a_clean_workspace_and_validates_every_params_key(project):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run([sys.executable, "-m", "cli.preflight"], cwd=project.root, env=env, capture_output=True,
                        text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    write_params(project, {"evaluate": {"n_images": 1}})  # read by evaluate only, found before ingest runs
    bad = subprocess.run([sys.executable, "-m", "cli.preflight"], cwd=project.root, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "error: preflight: params.yaml: evaluate.n_images" in bad.stderr


@pytest.mark.parametrize("content", [None, "", "# all commented out\n"])
def test_the_flow_says_in_one_line_that_params_yaml_is_missing_or_empty(project, content):
    params = project.root / "params.yaml"
    params.unlink()
    if content is not None:
        params.write_text(content)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=project.root, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr  # that line and nothing else
    assert proc.stderr.startswith("error: pipeline: ") and ("not found" if content is None else "is empty") in proc.stderr
    assert not (project.root / "data").exists()  # nothing ran on built-in defaults


def test_a_failed_write_leaves_no_partial_output(project):
    write_params(project, {"ingest": {"sources": ["embedded:pydoc"]}})
    proc = run_stage_cli(project.root, "ingest", limit_file_size=100_000)
    assert proc.returncode != 0
    raw = project.root / "data" / "raw"
    assert not raw.exists() or not any(raw.iterdir())  # nothing a later stage or DVC would accept
    leftovers = [p.name for p in (project.root / "data").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


FAIL_FAST = [c for c in CASES if "beyond memory" in c.name or "tracking server" in c.name]


@pytest.mark.parametrize("case", FAIL_FAST, ids=[c.name for c in FAIL_FAST])
def test_limits_fail_fast_with_exit_2(project, case):
    import time

    case.setup(project)
    start = time.monotonic()
    proc = run_stage_cli(project.root, case.stage)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert elapsed < 30, f"{case.name} took {elapsed:.1f} s to fail"
    assert not (project.root / "artifacts" / "train").exists()  # nothing was trained


def test_a_run_that_would_take_days_is_reported_from_its_first_steps(project):
    import time

    after(("ingest", "clean", "preprocess"), corpus_then(train={"max_steps": 10**12, "log_interval": 5,
                                                                "eval_interval": 10**11}))(project)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("GENPIPE_DEBUG", "GENPIPE_LOCK_TOKEN"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=project.root, env=env, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stderr:
            lines.append(line)
            if "would take about" in line or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait()
    warning = [line for line in lines if "would take about" in line]
    assert warning, "".join(lines[-20:])
    assert "train.max_steps=1000000000000" in warning[0] and "years" in warning[0] and "s/step" in warning[0]
