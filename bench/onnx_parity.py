"""ONNX export of every generator family at its default size: export seconds, parity and latency, PyTorch against
ONNX Runtime.

Each family is built from its params.yaml section (`model.<name>`) and what the data would fix (the default BPE
vocabulary of `preprocess.vocab_size`; 16x16 grayscale digits of 10 classes), with freshly initialised weights:
parity and latency do not need trained ones (the same operations run whatever the values), though trained logits
are larger and their absolute differences grow with them. `serving.exports.onnx_export` writes each family's
graphs (its export seconds include the parity check it runs; "register" is the same in a fresh process, loading
the saved generator first, as tasks/register.py does), then each graph is timed on the same seeded inputs
in both runtimes at two batch sizes: median wall time of repeated calls after a warm-up, PyTorch under
`torch.inference_mode()` with `torch.set_num_threads(THREADS)` and ONNX Runtime's CPU provider with
`intra_op_num_threads=THREADS` (one inter-op thread, no spinning between calls), so both get the same
cores; PyTorch is timed first, before ONNX Runtime's thread pool exists. The max abs diff column is
measured on those inputs too. The DDPM also runs its whole DDIM sampler (`sample_steps` UNet calls): the product's
`DDPM.sample(sampler="ddim")` against serving/onnx_sampling.py's numpy loop over the ONNX UNet, from the same noise.

The code measured is this checkout's working tree (no fresh clone: nothing here is trained, and the figures belong
to the exporter as it is now).

Usage: python bench/onnx_parity.py [--only gpt] [--repeats N]   (writes bench/results/onnx_parity.json, prints a
markdown table)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench.onnx_parity")

from bench.common import Result, commit_of  # noqa: E402  (after the path is set)

THREADS = 2
# graph inputs per family at (small, large) batch: text reads whole contexts; one generation step is the small
# RNN case (one token per row); images are one image and a serving-sized batch.
BATCHES = {"gpt": ((1, 128), (8, 128)), "lstm": ((1, 1), (8, 128)), "gru": ((1, 1), (8, 128)),
           "dcgan": (1, 64), "cdcgan": (1, 64), "vae": (1, 64), "ddpm": (1, 64)}
DDIM_BATCH = 16
N_CLASSES, IMAGE_SIZE = 10, 16


def default_model(name: str):
    """Build generator `name` from its params.yaml section and the default data's fields, untrained."""
    import dataclasses

    import torch

    from config.params import load_params
    from models.base import generator_class

    params = load_params(REPO / "params.yaml", overrides={"model.name": name})
    cls = generator_class(name)
    data = ({"vocab_size": params.preprocess.vocab_size, "eot_id": 0} if params.model.modality.name == "text" else
            {"image_size": IMAGE_SIZE, "channels": 1, "n_classes": N_CLASSES})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    torch.manual_seed(0)
    return cls(cls.Config(**params.model.hparams.architecture(), **{k: v for k, v in data.items() if k in fields}))


def graph_inputs(name: str, model, size) -> dict:
    """Seeded inputs (torch tensors by graph input name) for one call of the family's graph."""
    import torch

    g, cfg = torch.Generator().manual_seed(1), model.config
    if name == "gpt":
        batch, seq = size
        return {"input_ids": torch.randint(cfg.vocab_size, (batch, seq), generator=g)}
    if name in ("lstm", "gru"):
        batch, seq = size
        state = {n: torch.zeros(cfg.n_layer, batch, cfg.n_hidden) for n in ("h", "c")[: 1 + (name == "lstm")]}
        return {"tokens": torch.randint(cfg.vocab_size, (batch, seq), generator=g)} | state
    if name == "ddpm":
        return {"x_t": torch.randn(size, cfg.channels, cfg.image_size, cfg.image_size, generator=g),
                "t": torch.randint(cfg.num_train_timesteps, (size,), generator=g)}
    z = {"z": torch.randn(size, cfg.latent_dim if name == "vae" else cfg.n_z, generator=g)}
    return z | ({"labels": torch.randint(cfg.n_classes, (size,), generator=g)} if name == "cdcgan" else {})


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Return the median wall seconds of `repeats` calls of `fn`, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# What tasks/register.py runs, in a process of its own (the exporter's first use in a process costs more).
REGISTER_EXPORT = """
import sys, time
from pathlib import Path
from models.base import load_generator
from serving.exports import onnx_export
start = time.perf_counter()
onnx_export(load_generator(Path(sys.argv[1])), Path(sys.argv[2]))
print(time.perf_counter() - start)
"""


def register_export_seconds(model, scratch: Path) -> float:
    """Return the seconds a fresh process takes to load the saved `model` and export it, as register does."""
    import subprocess

    model.save(scratch / "generator")
    proc = subprocess.run([sys.executable, "-c", REGISTER_EXPORT, str(scratch / "generator"), str(scratch / "onnx")],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def ort_session(path: Path):
    """Return an ONNX Runtime CPU session on THREADS intra-op threads that do not spin between calls: spinning
    threads would take the cores from PyTorch's when the two alternate on a small machine."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def family_rows(name: str, repeats: int, scratch: Path) -> list[dict]:
    """Export family `name` at its default size and compare the runtimes on each batch size."""
    import numpy as np
    import torch

    from models.base import Traced
    from serving.exports import onnx_export

    model = default_model(name).eval()
    register_s = register_export_seconds(model, scratch / f"{name}-register")
    start = time.perf_counter()
    manifest = onnx_export(model, scratch / name)
    export_seconds = time.perf_counter() - start
    (graph_name, entry), = manifest["graphs"].items()
    graph = model.onnx_graphs()[graph_name]
    module = Traced(graph.module, lambda m, *inputs: m(*inputs)).eval()
    inputs = [graph_inputs(name, model, size) for size in BATCHES[name]]
    with torch.inference_mode():  # PyTorch first, before any ONNX Runtime thread pool exists
        torch_runs = [(_as_tuple(module(*x.values())), median_seconds(lambda x=x: module(*x.values()), repeats))
                      for x in inputs]
    session = ort_session(scratch / name / entry["file"])
    rows = []
    for x, (want, torch_s) in zip(inputs, torch_runs):
        feeds = {k: v.numpy() for k, v in x.items()}
        got = session.run(None, feeds)
        ort_s = median_seconds(lambda: session.run(None, feeds), repeats)
        rows.append({"generator": name, "graph": graph_name, "params": model.n_params(),
                     "inputs": {k: list(v.shape) for k, v in x.items()},
                     "export_seconds": round(export_seconds, 2), "register_export_seconds": round(register_s, 2),
                     "max_abs_diff": max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)),
                     "export_max_abs_diff": entry["parity"]["max_abs_diff"], "tolerance": entry["parity"]["tolerance"],
                     "torch_ms": round(1000 * torch_s, 3), "onnxruntime_ms": round(1000 * ort_s, 3),
                     "speedup": round(torch_s / ort_s, 2)})
        log.info(json.dumps(rows[-1]))
    if name == "ddpm":
        rows.append(ddim_row(model, scratch / name, session, export_seconds, register_s, entry))
    return rows


def ddim_row(model, folder: Path, session, export_seconds: float, register_s: float, entry: dict) -> dict:
    """Time the whole DDIM sampler: the product's against the numpy loop over the ONNX UNet, same noise."""
    import numpy as np
    import torch

    from serving.onnx_sampling import DDIM_TOLERANCE, ddim_sample

    cfg = model.config
    noise = torch.randn((DDIM_BATCH, cfg.channels, cfg.image_size, cfg.image_size),
                        generator=torch.Generator().manual_seed(2))

    def ours() -> np.ndarray:
        return model.sample(DDIM_BATCH, generator=torch.Generator().manual_seed(2), sampler="ddim").numpy()

    want, got = ours(), ddim_sample(folder, noise.numpy(), session=session)
    torch_s = median_seconds(ours, 3)
    ort_s = median_seconds(lambda: ddim_sample(folder, noise.numpy(), session=session), 3)
    return {"generator": "ddpm", "graph": f"ddim sampler ({cfg.sample_steps} unet calls)", "params": model.n_params(),
            "inputs": {"noise": list(noise.shape)}, "export_seconds": round(export_seconds, 2),
            "register_export_seconds": round(register_s, 2),
            "max_abs_diff": float(np.abs(got - want).max()), "export_max_abs_diff": entry["parity"]["max_abs_diff"],
            "tolerance": DDIM_TOLERANCE,
            "torch_ms": round(1000 * torch_s, 1), "onnxruntime_ms": round(1000 * ort_s, 1),
            "speedup": round(torch_s / ort_s, 2)}


def print_table(rows: list[dict]) -> None:
    print("| generator | graph | params | inputs | export s (register) | max abs diff | tolerance | PyTorch ms "
          "| ONNX Runtime ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["inputs"].items())
        export = f"{r['export_seconds']} ({r['register_export_seconds']})"
        print(f"| {r['generator']} | {r['graph']} | {r['params']:,} | {shapes} | {export} | {r['max_abs_diff']:.2g} | "
              f"{r['tolerance']:g} | {r['torch_ms']} | {r['onnxruntime_ms']} | {r['speedup']} |")


def main() -> None:
    import torch

    from models.registry import GENERATORS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(GENERATORS), action="append", help="run only these generators")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per graph and batch (median)")
    args = parser.parse_args()
    result = Result("onnx_parity")
    torch.set_num_threads(THREADS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="genpipe-onnx-") as scratch:
        for name in args.only or list(GENERATORS):
            rows += family_rows(name, args.repeats, Path(scratch))
    result.write({"code": "this checkout's working tree", "threads": THREADS,
                  "threads_note": f"torch.set_num_threads({THREADS}); onnxruntime intra_op_num_threads={THREADS}, "
                                  "inter_op_num_threads=1, allow_spinning=0",
                  "weights": "freshly initialised, default architecture of params.yaml (parity and latency do not "
                             "depend on training)",
                  "latency": f"median of {args.repeats} calls after 3 warm-up calls (DDIM sampler: median of 3)",
                  "rows": rows}, commit_of(REPO))
    print_table(rows)


if __name__ == "__main__":
    main()
