"""Batched text serving over HTTP: 16 prompts in one request against the same 16 sent one request at a time.

In a fresh clone of the last commit (sharing this venv), `dvc repro` trains and registers the default GPT; then
`mlflow models serve` serves `models:/text-generator@champion` (one worker, as `make serve` does). 16 prompts of
different lengths (4 to 40 words of the default corpus's kind), each with its own seed, `max_new_tokens=64`,
temperature 0.8, top_k 50: sent as one request of 16 rows (generated together through one KV cache), then as 16
requests of one row, after one warm-up request. Reported: generated tokens per second both ways, the ratio, and
whether the 16 texts are identical both ways (they must be). Streaming: `python -m serving.stream` on the same
champion; for each of the 16 rows, the seconds to the first event and to the last, over server-sent events.

Usage: python bench/serving_batch.py [--repeats 3]   (writes bench/results/serving_batch.json)
"""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.serving_batch")

from bench.common import Result, commit_of, fresh_clone, remove_clone, run, stage_env  # noqa: E402

WORDS = ("the function returns a value when the argument is given and the list holds every item of the module "
         "so that each class keeps its own name").split()
N_ROWS, NEW_TOKENS = 16, 64


def wait_for(url: str, seconds: float = 120) -> None:
    """Wait until `url`/ping answers 200."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer /ping within {seconds:g} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows() -> list[dict]:
    out = []
    for i in range(N_ROWS):
        n = 4 + (i * 36) // (N_ROWS - 1)
        out.append({"prompt": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)).capitalize(),
                    "max_new_tokens": NEW_TOKENS, "temperature": 0.8, "top_k": 50, "seed": 100 + i})
    return out


def main() -> None:
    import requests

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = Result("serving_batch")
    clone = fresh_clone("genpipe-serving-")
    try:
        env = stage_env(clone)
        run(["dvc", "repro"], clone, env)
        port = free_port()
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone / 'mlflow.db'}"
        server = subprocess.Popen(["mlflow", "models", "serve", "-m", "models:/text-generator@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(url)
            post = lambda body: requests.post(f"{url}/invocations", json={"inputs": body}, timeout=600)  # noqa: E731
            post(rows()[:1]).raise_for_status()  # warm-up
            batched, single, same = [], [], True
            for _ in range(args.repeats):
                start = time.perf_counter()
                together = post(rows()).json()["predictions"]
                batched.append(time.perf_counter() - start)
                start = time.perf_counter()
                alone = [post([r]).json()["predictions"][0] for r in rows()]
                single.append(time.perf_counter() - start)
                same &= together == alone
            sport = free_port()
            streamer = subprocess.Popen([sys.executable, "-m", "serving.stream", "--model",
                                         "models:/text-generator@champion", "--port", str(sport)], cwd=clone, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                surl = f"http://127.0.0.1:{sport}"
                wait_for(surl)
                first_event, whole = [], []
                for r in rows():
                    start, first = time.perf_counter(), None
                    with requests.post(f"{surl}/stream", json={"inputs": [r]}, stream=True, timeout=600) as resp:
                        for line in resp.iter_lines():
                            if first is None and line.startswith(b"data: "):
                                first = time.perf_counter() - start
                    first_event.append(first)
                    whole.append(time.perf_counter() - start)
            finally:
                streamer.terminate()
                streamer.wait(timeout=30)
        finally:
            server.terminate()
            server.wait(timeout=30)
        tokens = N_ROWS * NEW_TOKENS
        figures = {"rows": N_ROWS, "new_tokens_per_row": NEW_TOKENS, "repeats": args.repeats,
                   "batched_s": [round(x, 3) for x in batched], "one_at_a_time_s": [round(x, 3) for x in single],
                   "batched_tokens_per_s": round(tokens / min(batched), 1),
                   "one_at_a_time_tokens_per_s": round(tokens / min(single), 1),
                   "speedup": round(min(single) / min(batched), 2), "identical_texts": same,
                   "stream_first_event_s_median": round(sorted(first_event)[len(first_event) // 2], 3),
                   "stream_first_event_s_max": round(max(first_event), 3),
                   "stream_whole_s_median": round(sorted(whole)[len(whole) // 2], 3)}
        log.info("%s", figures)
        result.write(figures, commit_of(clone))
    finally:
        remove_clone(clone)


if __name__ == "__main__":
    main()
