"""Standard formats of a trained generator, for consumers outside this project.

`hf_export`: a GPT as a Hugging Face model directory (`save_pretrained`: weights in safetensors, `config.json` for
the stock `GPT2LMHeadModel`, and the tokenizer as a `PreTrainedTokenizerFast` with `<|endoftext|>` as its bos, eos
and pad token). `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it
offline with transformers alone (no code of this project, no remote code) and give the product's logits. LoRA
models are exported with their adapters folded into the weights. Every registered GPT version carries it as the
artifact folder `hf/` of its run.

`onnx_export`: any generator as ONNX graphs for onnxruntime (or any ONNX runtime), no PyTorch needed to run them:
one `<graph>.onnx` per graph the family declares (`onnx_graphs()` in its models/ file: gpt `logits`, lstm/gru
`step` with the state in and out, dcgan/cdcgan `generator`, vae `decoder`, ddpm `unet`), and `onnx.json`, the
manifest: family and config, each graph's inputs and outputs (names, dtypes, shapes with symbolic dims), the opset,
what a consumer needs besides the graphs (`usage`: start token, state shapes, latent size, the DDIM schedule, how
outputs become pixels) and the parity measured at export: the largest absolute difference between ONNX Runtime's
outputs and PyTorch's on fixed seeded inputs, at the traced shape and at other sizes of the dynamic dims. An export
whose parity exceeds a graph's tolerance fails (`ParityError`) and leaves nothing behind. Text generators carry
their `tokenizer.json`. Every registered version carries it as the artifact folder `onnx/` of its run;
serving/onnx_sampling.py is the DDIM loop a consumer runs on a DDPM's `unet` with numpy alone.

Run: `python -m serving.exports --model models:/text-generator@champion --out my-gpt` (needs the tracking URI in
MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db), or `--generator artifacts/train --tokenizer
data/processed/tokenizer.json --out my-gpt` for the workspace's trained model; `--format onnx` for ONNX (the only
format, and so the default, of every family but gpt, whose default is hf).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
ONNX_MANIFEST = "onnx.json"
ONNX_FORMAT_VERSION = 1  # of the manifest's layout
# The dynamo exporter (torch.export, then onnxscript's translation), not the TorchScript one (dynamo=False): the
# latter cannot export the GPT (transformers' mask code calls aten::diff, which it has no translation for) and is
# deprecated since torch 2.9. Its cost is export time: 3-8 s a graph at the default sizes against the legacy
# exporter's 0.6-0.9 s for the families it can export (bench/onnx_parity.py records export seconds).
OPSET = 18  # the exporter's native opset (no version conversion); onnxruntime runs it from 1.14 on
TOKENIZER = "tokenizer.json"


class ParityError(ValueError):
    """An exported graph does not compute what the PyTorch model computes, within the graph's tolerance."""


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside `out` to fill; on success it takes `out`'s place (renames on one file system,
    so a kill leaves the old folder or the new one, never a half-written one); on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        tmp = Path(scratch) / out.name
        tmp.mkdir()
        yield tmp
        old = Path(scratch) / "old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)


def hf_export(model, tokenizer, out: Path) -> Path:
    """Write `model` (a models.gpt.GPT) and its tokenizer (a `tokenizers.Tokenizer`) as a Hugging Face model
    directory `out`; return it."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    if getattr(model.config, "lora_r", 0):
        model = model.merged()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the stage's log
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT, pad_token=EOT)
    tok.model_max_length = model.block_size
    out = Path(out)
    with _replacing(out) as tmp:
        model.net.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    log.info("exported %s (Hugging Face GPT2LMHeadModel + tokenizer)", out)
    return out


# ---------------------------------------------------------------------------------------------- ONNX


def onnx_export(model, out: Path, *, tokenizer=None, tolerance: float | None = None) -> dict[str, Any]:
    """Write the ONNX graphs `model` (a models.base.Generator) declares and their manifest into the folder `out`;
    return the manifest. `tokenizer` (a `tokenizers.Tokenizer`) is saved beside them; `tolerance` replaces every
    graph's own. Raise ParityError when ONNX Runtime and PyTorch disagree by more than the tolerance."""
    import onnxruntime
    import torch

    graphs = model.onnx_graphs()
    out = Path(out)
    with _replacing(out) as tmp:
        entries = {name: _export_graph(model.name, name, graph, tmp,
                                       graph.tolerance if tolerance is None else tolerance)
                   for name, graph in graphs.items()}
        if tokenizer is not None:
            tokenizer.save(str(tmp / TOKENIZER))
        manifest = {
            "format_version": ONNX_FORMAT_VERSION,
            "family": model.name,
            "modality": model.modality,
            "config": dataclasses.asdict(model.config),
            "opset": OPSET,
            "exporter": {"torch": torch.__version__, "dynamo": True, "onnxruntime": onnxruntime.__version__},
            "graphs": entries,
            "usage": model.onnx_usage(),
            "tokenizer": TOKENIZER if tokenizer is not None else None,
            "files": sorted(p.name for p in tmp.iterdir()) + [ONNX_MANIFEST],
        }
        (tmp / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    worst = max(e["parity"]["max_abs_diff"] for e in entries.values())
    log.info("exported %s (ONNX opset %d: %s; max abs diff vs PyTorch %.2g)", out, OPSET, ", ".join(entries), worst)
    return manifest


def _export_graph(family: str, name: str, graph, directory: Path, tolerance: float) -> dict[str, Any]:
    """Export one `OnnxGraph` to `directory/<name>.onnx`, measure its parity; return its manifest entry."""
    import torch

    from models.base import Traced, eval_mode

    dims: dict[str, torch.export.Dim] = {}
    shapes = tuple({axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in
                    graph.dynamic_axes.get(n, {}).items()} for n in graph.input_names)
    path = directory / f"{name}.onnx"
    with eval_mode(graph.module), torch.no_grad(), _quiet_exporter():
        # Always through `Traced`, so every graph has the one signature `forward(*inputs)` dynamic_shapes follows.
        module = Traced(graph.module, lambda m, *inputs: m(*inputs)).eval()
        program = torch.onnx.export(module, graph.inputs, dynamo=True, input_names=list(graph.input_names),
                                    output_names=list(graph.output_names), dynamic_shapes=(shapes,),
                                    opset_version=OPSET, verbose=False)
        expected = [_as_tuple(module(*inputs)) for inputs in (graph.inputs, *graph.checks)]
    _declare_dynamic_outputs(program.model.graph, graph.dynamic_axes)
    program.model.graph.doc_string = graph.doc
    program.save(str(path))
    diff, worst = _parity(path, graph, expected)
    if not diff <= tolerance:  # NaN fails too
        shapes_seen = {n: list(x.shape) for n, x in zip(graph.input_names, worst)}
        raise ParityError(f"ONNX export of {family} graph {name!r}: ONNX Runtime differs from PyTorch by {diff:.3g} "
                          f"(max abs, inputs {shapes_seen}), above the tolerance {tolerance:.3g}")
    return {"file": path.name, "doc": graph.doc, **_signature(path),
            "parity": {"max_abs_diff": diff, "tolerance": tolerance, "seed": 0, "runtime": "onnxruntime CPU",
                       "inputs": [{n: list(x.shape) for n, x in zip(graph.input_names, inputs)}
                                  for inputs in (graph.inputs, *graph.checks)]}}


def _declare_dynamic_outputs(g, dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Give the outputs of the onnx_ir graph `g` the symbolic dims declared for them.

    torch.export's shape propagation leaves some dynamic dims at their traced size (the LSTM's seq, in the outputs
    and the values before them); runtimes then warn on every call whose result disagrees. The declared axes are the
    truth: where an output needs them, the intermediate shapes are dropped too and the runtime infers its own."""
    import onnx_ir as ir

    corrected = False
    for value in g.outputs:
        axes = dynamic_axes.get(value.name, {})
        if value.shape is None or not axes:
            continue
        corrected |= any(isinstance(value.shape[i], int) for i in axes)
        value.shape = ir.Shape([ir.SymbolicDim(axes[i]) if i in axes else d for i, d in enumerate(value.shape)])
    if corrected:
        ends = {id(v) for v in (*g.inputs, *g.outputs)}
        for node in g:
            for value in node.outputs:
                if id(value) not in ends:
                    value.shape = None


def _as_tuple(outputs) -> tuple:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _parity(path: Path, graph, expected: list[tuple]) -> tuple[float, tuple]:
    """Return the largest absolute difference between ONNX Runtime's outputs of `path` and `expected` (PyTorch's,
    one tuple per input set of `graph`) and the input set where it occurs."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, worst_inputs = 0.0, graph.inputs
    for inputs, want in zip((graph.inputs, *graph.checks), expected):
        got = session.run(list(graph.output_names), {n: x.numpy() for n, x in zip(graph.input_names, inputs)})
        for g, w in zip(got, want):
            w = w.detach().numpy()
            diff = float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
            diff = diff if np.isfinite(diff) else float("inf")  # a NaN must not hide behind a later finite diff
            if diff > worst:
                worst, worst_inputs = diff, inputs
    return worst, worst_inputs


def _signature(path: Path) -> dict[str, list[dict]]:
    """Return the inputs and outputs of the ONNX model at `path`: names, numpy dtypes, shapes (str: symbolic)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def describe(value) -> dict:
        t = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [describe(v) for v in proto.graph.input], "outputs": [describe(v) for v in proto.graph.output]}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's notes out of the log for the block: its INFO lines on every optimisation pass, and
    warnings on torch internals (deprecations, RNN weight attributes) that say nothing about the graph."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.exports", description=(__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a registered model URI, e.g. models:/text-generator@champion")
    parser.add_argument("--generator", type=Path, help="a trained generator folder (train.out_dir)")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer.json (with --generator; text generators)")
    parser.add_argument("--format", choices=("hf", "onnx"),
                        help="hf (Hugging Face, gpt only) or onnx (every family); default: hf for gpt, else onnx")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.model:
        import mlflow

        py = mlflow.pyfunc.load_model(args.model).unwrap_python_model()  # as a consumer loads it
        model, tokenizer = py.model, getattr(py, "tokenizer", None)
    elif args.generator:
        from models.base import load_generator

        model, tokenizer = load_generator(args.generator), None
        if args.tokenizer:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(args.tokenizer))
    else:
        parser.error("give --model, or --generator (with --tokenizer for a text generator)")
    fmt = args.format or ("hf" if model.name == "gpt" else "onnx")
    if fmt == "hf" and model.name != "gpt":
        sys.stderr.write(f"error: exports: a {type(model).__name__} has no Hugging Face format; only GPT does "
                         "(--format onnx works for every generator)\n")
        sys.exit(2)
    if fmt == "hf" and tokenizer is None:
        parser.error("the Hugging Face format needs the tokenizer: give --tokenizer with --generator")
    if fmt == "hf":
        hf_export(model, tokenizer, args.out)
        return
    try:
        onnx_export(model, args.out, tokenizer=tokenizer)
    except ParityError as exc:
        sys.stderr.write(f"error: exports: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
