"""Standard formats of a trained generator, for consumers outside this project.

`hf_export`: a GPT as a Hugging Face model directory (`save_pretrained`: weights in safetensors, `config.json` for
the stock `GPT2LMHeadModel`, and the tokenizer as a `PreTrainedTokenizerFast` with `<|endoftext|>` as its bos, eos
and pad token). `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load it
offline with transformers alone (no code of this project, no remote code) and give the product's logits. LoRA
models are exported with their adapters folded into the weights. Every registered GPT version carries it as the
artifact folder `hf/` of its run.

Run: `python -m serving.exports --model models:/text-generator@champion --out my-gpt` (needs the tracking URI in
MLFLOW_TRACKING_URI, e.g. sqlite:///mlflow.db), or `--generator artifacts/train --tokenizer
data/processed/tokenizer.json --out my-gpt` for the workspace's trained model.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"


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
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        tmp = Path(scratch) / "hf"
        model.net.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), out)
    log.info("exported %s (Hugging Face GPT2LMHeadModel + tokenizer)", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.exports", description=(__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a registered model URI, e.g. models:/text-generator@champion")
    parser.add_argument("--generator", type=Path, help="a trained generator folder (train.out_dir)")
    parser.add_argument("--tokenizer", type=Path, help="its tokenizer.json (with --generator)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.model:
        import mlflow

        py = mlflow.pyfunc.load_model(args.model).unwrap_python_model()  # as a consumer loads it
        model, tokenizer = py.model, getattr(py, "tokenizer", None)
    elif args.generator and args.tokenizer:
        from tokenizers import Tokenizer

        from models.base import load_generator

        model, tokenizer = load_generator(args.generator), Tokenizer.from_file(str(args.tokenizer))
    else:
        parser.error("give --model, or --generator and --tokenizer")
    if type(model).__name__ != "GPT":
        sys.stderr.write(f"error: exports: a {type(model).__name__} has no Hugging Face format; only GPT does\n")
        sys.exit(2)
    hf_export(model, tokenizer, args.out)


if __name__ == "__main__":
    main()
