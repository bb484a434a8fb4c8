"""The model stages run for real on the tiny project: train (and its resume after a kill -9), evaluate, register,
and serving the champion through MLflow's pyfunc loader. MLflow uses a sqlite store inside the temporary project."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from config.catalog import CONTINUATIONS_FILE, META_FILE, RUN_FILE, SAMPLES_FILE
from models.base import CONFIG_FILE, WEIGHTS_FILE, load_generator
from registry.gate import CHALLENGER, CHAMPION
from runtime.io import read_json, read_jsonl
from tasks.clean import clean
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.register import register
from tasks.train import train

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def checkpoint_step(state_file: Path) -> int:
    """Read the step of a checkpoint from its state.json (flattened: dicts are lists of key/value pairs)."""
    return dict(json.loads(state_file.read_text())["state"]["$dict"])["step"]


# ---------------------------------------------------------------------------------------------------- train


def test_a_run_as_short_as_its_warmup_trains_and_says_how_it_warms_up(staged, caplog):
    params = staged(train={"max_steps": 20, "warmup_steps": 50, "eval_interval": 10})
    with caplog.at_level("WARNING", logger="tasks.train"):
        metrics = train(params)
    assert metrics["steps"] == 20 and math.isfinite(metrics["best_val_loss"])
    (line,) = [r.getMessage() for r in caplog.records if "warm" in r.getMessage()]
    assert line == ("train: warmup_steps=50 is not below max_steps=20: warming up over 2 steps instead (a tenth of "
                    "the run); set train.warmup_steps to choose")


def test_train_writes_model_metrics_and_loss_curve_then_resumes_to_identical_weights(project, staged, caplog):
    params = staged()

    metrics = train(params)

    out = params.train.out_dir
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, RUN_FILE])
    model = load_generator(out)
    meta = read_json(params.preprocess.out_dir / META_FILE)
    assert model.config.vocab_size == meta["vocab_size"] and model.config.block_size == 32

    assert read_json(params.train.metrics_path) == metrics
    assert metrics["steps"] == 4 and metrics["device"] == "cpu" and metrics["n_params"] == model.n_params()
    curve = read_json(params.train.plots_path)
    assert [row["step"] for row in curve] == [2, 4]  # every eval_interval, and the final step
    for row in curve:
        assert set(row) == {"step", "train_loss", "val_loss"}
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("train_loss", "val_loss"))
    assert metrics["best_val_loss"] == min(row["val_loss"] for row in curve)
    assert metrics["best_step"] in (2, 4)
    assert metrics["final_train_loss"] == curve[-1]["train_loss"]

    run_id = read_json(out / RUN_FILE)["run_id"]
    run = mlflow.MlflowClient(params.register.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "gpt" and run.data.params["train.max_steps"] == "4"
    assert {"train_loss", "val_loss", "lr"} <= set(run.data.metrics)
    steps = read_json(params.train.steps_plots_path)  # the curve `dvc plots show` draws: every log interval
    assert [row["step"] for row in steps] == list(range(params.train.log_interval, 5, params.train.log_interval))
    assert steps[-1]["lr"] > 0 and all(math.isfinite(row["train_loss"]) for row in steps)
    tables = [a.path for a in mlflow.MlflowClient(params.register.tracking_uri).list_artifacts(run_id, "samples")]
    assert tables == ["samples/step_000002.json", "samples/step_000004.json"]  # text samples at each validation
    table = read_json(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=tables[-1])))
    assert table["columns"] == ["step", "prompt", "sample"] and len(table["data"]) == 4

    weights = (out / WEIGHTS_FILE).read_bytes()
    caplog.clear()
    with caplog.at_level("INFO"):
        again = train(params)  # same inputs: resumes from the final checkpoint, nothing left to do
    assert any("resuming" in r.getMessage() and "step 4" in r.getMessage() for r in caplog.records)
    assert (out / WEIGHTS_FILE).read_bytes() == weights
    assert read_json(params.train.plots_path) == curve
    c = read_json(out / "generator.json")["config"]
    assert metrics["tokens_per_second"] > 0  # MFU needs a CUDA device in the peak table: none on this CPU
    assert metrics["train_flops_per_token"] == 3 * (c["n_layer"] * (24 * c["n_embd"] ** 2 + 4 * c["block_size"]
                                                                    * c["n_embd"]) + 2 * c["n_embd"] * c["vocab_size"])
    assert "mfu" not in metrics
    timings = {"tokens_per_second", "train_seconds"}
    assert {k: v for k, v in again.items() if k not in timings} == {k: v for k, v in metrics.items() if k not in timings}
    assert read_json(out / RUN_FILE)["run_id"] == run_id  # the same MLflow run, not a new one


def test_changed_training_params_start_afresh_in_a_new_checkpoint(project, staged):
    params = staged()
    train(params)
    params2 = project.make_params(train={"lr": 0.001})
    train(params2)
    keys = sorted(p.name for p in params.train.checkpoint_dir.iterdir())
    assert len(keys) == 2  # one checkpoint per run key; the old one is not resumed with other settings
    for key in keys:
        assert (params.train.checkpoint_dir / key / "last" / "state.json").is_file()
        assert (params.train.checkpoint_dir / key / "best" / "state.json").is_file()


# Kill -9 and resume, bit-exact, for every generator family: tests/stages/test_resume_every_family.py.


# ---------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_consistent_metrics_samples_and_continuations(project, staged):
    params = staged()
    train(params)

    metrics = evaluate(params)

    assert read_json(params.evaluate.metrics_path) == metrics
    meta = read_json(params.preprocess.out_dir / META_FILE)
    for key in ("test_loss", "test_perplexity", "test_bpb", "test_unigram_bpb"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]), rel=1e-5)
    assert metrics["test_tokens"] == meta["test"]["n_tokens"] - 1  # every token after the first, once
    assert metrics["test_bytes"] == meta["test"]["n_bytes"]
    assert metrics["test_bpb"] == pytest.approx(
        metrics["test_loss"] * metrics["test_tokens"] / math.log(2) / metrics["test_bytes"], rel=1e-5)
    assert metrics["test_unigram_bpb"] == meta["test"]["byte_entropy_bits"]
    # a 4-step model is nearly uniform over the vocabulary: loss close to log(vocab)
    assert metrics["test_loss"] < 1.2 * math.log(meta["vocab_size"])
    if metrics["test_bpb"] < metrics["test_unigram_bpb"]:  # only a trained model gets there; record it if it does
        assert metrics["test_perplexity"] < meta["vocab_size"]
    for key in ("bleu", "rouge_l"):
        assert 0.0 <= metrics[key] <= 1.0

    out = params.evaluate.out_dir
    samples = read_jsonl(out / SAMPLES_FILE)
    assert len(samples) == params.evaluate.n_samples
    assert [s["index"] for s in samples] == list(range(params.evaluate.n_samples))
    assert all(s["seed"] == params.evaluate.seed and isinstance(s["text"], str) for s in samples)
    continuations = read_jsonl(out / CONTINUATIONS_FILE)
    assert len(continuations) == params.evaluate.n_prompts
    assert all(set(c) == {"prompt", "reference", "generated"} for c in continuations)

    again = evaluate(params)  # seeded sampling and greedy continuations: the same files again
    assert read_jsonl(out / SAMPLES_FILE) == samples
    assert {k: v for k, v in again.items() if k != "scoring_tokens_per_second"} == \
        {k: v for k, v in metrics.items() if k != "scoring_tokens_per_second"}


def test_evaluate_on_a_test_split_shorter_than_one_prompt_reports_null_text_scores(project, staged, caplog):
    params = staged(evaluate={"prompt_tokens": 100_000, "continuation_tokens": 100_000})
    train(params)

    with caplog.at_level("INFO"):  # the summary line must render with null scores
        metrics = evaluate(params)

    assert metrics["bleu"] is None and metrics["rouge_l"] is None  # JSON null, not NaN
    assert read_json(params.evaluate.metrics_path)["bleu"] is None
    assert math.isfinite(metrics["test_bpb"])
    assert read_jsonl(params.evaluate.out_dir / CONTINUATIONS_FILE) == []
    assert any(r.levelname == "WARNING" and "BLEU/ROUGE-L skipped" in r.getMessage() for r in caplog.records)
    assert any("evaluate: test bpb" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------- register


def test_register_gates_on_the_champion_rescored_and_the_champion_serves(project, staged):
    params = staged()
    train(params)
    evaluate(params)
    name, metric = params.register.model_name, params.register.promote_metric
    client = mlflow.MlflowClient(params.register.tracking_uri, registry_uri=params.register.tracking_uri)

    first = register(params)

    assert first["version"] == 1 and first["promoted"] is True and first["champion_version"] == 1
    assert first["decision_rule"] == "no champion yet" and first["comparison"] is None
    assert read_json(params.register.metrics_path) == first
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "1"
    v1 = client.get_model_version(name, "1")
    assert v1.tags["decision"] == "promoted"
    bpb = read_json(params.evaluate.metrics_path)[metric]
    assert float(v1.tags[f"metric.{metric}"]) == pytest.approx(bpb)
    protocol = read_json(params.evaluate.out_dir / "protocol.json")
    assert v1.tags["protocol.test_sha256"] == protocol["test_sha256"] and len(v1.tags["protocol"]) == 16
    assert first["run_id"] == read_json(params.train.out_dir / RUN_FILE)["run_id"]  # logged to the training run

    # The same model again, with metrics.json claiming it is far better: the gate never reads stored numbers. It
    # re-scores the champion on the challenger's test documents, finds the same bits per byte, and keeps it.
    boasted = dict(read_json(params.evaluate.metrics_path), **{metric: bpb - 0.5})
    params.evaluate.metrics_path.write_text(json.dumps(boasted))
    second = register(params)

    assert second["version"] == 2 and second["promoted"] is False and second["champion_version"] == 1
    assert second["decision"] == "kept_champion" and second["decision_rule"].startswith("register.min_improvement")
    assert second[f"champion_rescored_{metric}"] == pytest.approx(bpb, abs=1e-6)  # the champion, re-scored
    assert second["comparison"]["gain"] == pytest.approx(0.0, abs=1e-6)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "2"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["decision"] == "kept_champion" and v2.tags["champion_version_before"] == "1"
    assert float(v2.tags[f"champion_rescored.{metric}"]) == pytest.approx(bpb, abs=1e-6)
    assert "re-scored" in v2.description and "## Against the champion" in v2.description  # the model card

    # A better model (trained longer) takes over, on the paired comparison, with its interval recorded.
    longer = project.params_with({"train": {"max_steps": 120, "eval_interval": 60}})
    train(longer)
    evaluate(longer)
    third = register(longer)
    c = third["comparison"]
    assert third["promoted"] is True and third["champion_version"] == 3, third
    assert c["n_units"] == protocol["test_documents"] and c["n_resamples"] == longer.register.bootstrap_samples
    assert 0 < c["ci_low"] <= c["gain"] <= c["ci_high"] and c["p_value"] < 0.05
    assert c["champion"] == pytest.approx(bpb, abs=1e-6)  # version 1, re-scored (v2 never became champion)
    v3 = client.get_model_version(name, "3")
    assert float(v3.tags["comparison.ci_low"]) == pytest.approx(c["ci_low"]) and "excludes 0" in v3.tags["decision_rule"]
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "3"
    assert list(longer.register.rescore_cache_dir.glob(f"{name}-v1-*.json"))  # re-scores of v1 are cached

    # The champion loads through the registry and continues prompts (greedy: deterministic).
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    request = pd.DataFrame({"prompt": ["The river", "A small"], "max_new_tokens": [6, 3],
                            "temperature": [0.0, 0.0], "top_k": [0, 0], "seed": [0, 0]})
    answer = model.predict(request)  # a DataFrame in, one {"text": ...} per row out
    assert len(answer) == 2 and all(set(a) == {"text"} and isinstance(a["text"], str) for a in answer)
    assert model.predict(request) == answer
    assert model.predict(request.to_dict("records")) == answer  # rows as dicts: the same
    # rows with the same settings are generated together; each gets what it gets alone with its seed
    rows = [{"prompt": p, "max_new_tokens": 8, "temperature": 0.9, "top_p": 0.9, "repetition_penalty": 1.2, "seed": i}
            for i, p in enumerate(["The river", "A", "Document 3 has a few more words in it"])]
    together = model.predict(rows)
    assert together == [model.predict([r])[0] for r in rows] and len({t["text"] for t in together}) > 1
    stopped = model.predict([{"prompt": "The river", "max_new_tokens": 20, "temperature": 0.0, "stop": ["e"]}])
    assert "e" not in stopped[0]["text"]
    # streaming: the pieces, joined, are the text predict gives the same row and seed
    python_model = model.unwrap_python_model()
    for row in rows + [{"prompt": "The river", "max_new_tokens": 20, "temperature": 0.0, "stop": ["e"]}]:
        pieces = list(python_model.predict_stream(None, [row]))
        assert "".join(pieces) == model.predict([row])[0]["text"]
        assert len(pieces) > 1 or len("".join(pieces)) <= 1
    # only the prompt is required
    assert len(model.predict(pd.DataFrame({"prompt": ["Document 3."]}))) == 1
    with pytest.raises(mlflow.exceptions.MlflowException, match="max_new_tokens"):
        model.predict(pd.DataFrame({"prompt": ["x"], "max_new_tokens": [0]}))


def test_register_without_a_value_for_the_promote_metric_names_a_challenger_but_no_champion(project, staged):
    params = staged(register={"promote_metric": "bleu"})
    train(params)
    evaluate(params)
    name = params.register.model_name
    client = mlflow.MlflowClient(params.register.tracking_uri, registry_uri=params.register.tracking_uri)
    scored = read_json(params.evaluate.metrics_path)
    params.evaluate.metrics_path.write_text(json.dumps(dict(scored, bleu=None)))  # as when the test split is short

    first = register(params)  # a fresh registry and nothing to compare: registered, not promoted

    assert first["version"] == 1 and first["promoted"] is False and first["champion_version"] is None
    text = params.register.metrics_path.read_text()  # JSON has no NaN: DVC and other readers need null
    written = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics/register.json holds {c}"))
    assert written["promoted"] is False and written["champion_version"] is None
    assert written["challenger_bleu"] is None
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, CHAMPION)

    params.evaluate.metrics_path.write_text(json.dumps(dict(scored, bleu=0.25)))
    second = register(params)  # the first challenger with a real value becomes champion
    assert second["promoted"] is True and second["champion_version"] == 2
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "2"


def test_a_diverged_run_exports_nothing_and_says_how_to_fix_it(project, staged):
    from runtime.errors import UserError

    params = staged(train={"lr": 1e30, "grad_clip": 0.0, "max_steps": 4, "eval_interval": 2})
    with pytest.raises(UserError, match="training diverged.*lower train.lr"):
        train(params)
    assert not params.train.out_dir.exists()


# ---------------------------------------------------------------------------------------------------- init_from


def hf_checkpoint(directory: Path, corpus_dir: Path) -> Path:
    """Save a tiny GPT-2 and a BPE tokenizer trained on `corpus_dir` as a Hugging Face model directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from dataprep.tokenize import train_tokenizer

    texts = [json.loads(line)["text"] for line in (corpus_dir / "corpus.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts, 300)
    torch.manual_seed(3)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_layer=1, n_head=2,
                               n_embd=32)).save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def test_init_from_a_hugging_face_directory_uses_its_tokenizer_and_weights(project, staged, tmp_path_factory):
    from transformers import GPT2LMHeadModel

    from training.trainer import Trainer

    project.write_corpus()
    ckpt = hf_checkpoint(tmp_path_factory.mktemp("hf"), project.path("data", "inputs"))
    params = staged(model={"init_from": str(ckpt)})
    assert (params.preprocess.out_dir / "tokenizer.json").read_text() == (ckpt / "tokenizer.json").read_text()
    trainer = Trainer(params)
    reference = GPT2LMHeadModel.from_pretrained(ckpt).state_dict()
    for name, tensor in trainer.model.net.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert trainer.model.block_size == 32  # trains on model.gpt.block_size windows of the 64-position checkpoint
    metrics = train(params)
    assert math.isfinite(metrics["best_val_loss"])


def test_finetuning_the_registered_champion_beats_training_from_scratch(project, staged):
    """Pretrain and register on one half of a corpus; on the other half, fine-tuning the champion for a few
    steps reaches a lower test bits per byte than training from scratch for the same steps."""
    pretrain = {"train": {"max_steps": 120, "eval_interval": 40, "lr": 0.01, "warmup_steps": 5}}
    params = staged(**pretrain)
    train(params)
    evaluate(params)
    register(params)
    name = params.register.model_name

    project.write_corpus(n_docs=200, seed=1)  # a related corpus: the same generator, other documents
    short = {"train": {"max_steps": 10, "eval_interval": 5, "lr": 0.003, "warmup_steps": 1},
             "ingest": {"sources": ["data/inputs/corpus.jsonl"]}}
    scratch = project.params_with(short)
    for stage in (ingest, clean, preprocess, train):  # the same registry: no fresh database here
        stage(scratch)
    scratch_bpb = evaluate(scratch)["test_bpb"]

    tuned = project.params_with(short | {"model": {"init_from": f"models:/{name}@champion"}})
    preprocess(tuned)
    train(tuned)
    tuned_bpb = evaluate(tuned)["test_bpb"]
    assert tuned_bpb < scratch_bpb, (tuned_bpb, scratch_bpb)


@pytest.mark.parametrize("spec, message", [
    ("./no/such/model", "no such model directory"),
    ("empty-dir", "is not a model directory"),
    ("llama-dir", "is a 'llama' model; the gpt generator takes gpt2"),
    ("models:/never-registered@champion", "not found in the registry"),
])
def test_bad_init_from_is_a_one_line_error_naming_it(project, staged, spec, message):
    from runtime.errors import DataError

    project.path("empty-dir").mkdir()
    llama = project.path("llama-dir")
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    project.write_corpus()
    params = staged()  # data staged with the default tokenizer; now point init_from at the bad spec
    params = project.params_with({"model": {"init_from": spec}})
    if spec == "llama-dir":
        (llama / "tokenizer.json").write_text((params.preprocess.out_dir / "tokenizer.json").read_text())
    with pytest.raises(DataError, match=message) as err:
        train(params)
    assert spec in str(err.value) and "\n" not in str(err.value)


def test_init_from_is_refused_for_recurrent_generators(project):
    from runtime.errors import ParamsError

    with pytest.raises(ParamsError, match="model.init_from.*gpt generator only"):
        project.make_params(model={"name": "lstm", "init_from": "models:/x@champion"})


# ---------------------------------------------------------------------------------------------------- LoRA

LORA = {"model": {"lora": {"r": 2, "alpha": 4.0, "target_modules": ["c_attn"]}}}


def test_lora_trains_adapters_only_and_both_exports_serve_the_same_text(project, staged):
    params = staged(**LORA)
    metrics = train(params)
    assert 0 < metrics["n_params_trainable"] < metrics["n_params"]
    assert metrics["trainable_fraction"] == pytest.approx(metrics["n_params_trainable"] / metrics["n_params"], 1e-4)
    evaluate(params)
    name = params.register.model_name
    request = pd.DataFrame([{"prompt": "The", "max_new_tokens": 12, "temperature": 0.0}])
    texts = {}
    for export in ("merged", "adapter"):
        p = project.params_with({"register": {"lora_export": export}})
        version = register(p)["version"]
        assert mlflow.MlflowClient().get_model_version(name, str(version)).tags["lora"] == export
        texts[export] = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(request)[0]["text"]
    assert texts["merged"] == texts["adapter"]


def test_lora_on_modules_the_model_lacks_is_a_one_line_error(project, staged):
    from runtime.errors import DataError

    params = staged(model={"lora": {"target_modules": ["q_proj", "v_proj"]}})
    with pytest.raises(DataError, match=r"model.lora.target_modules: \['q_proj', 'v_proj'\] not found"):
        train(params)


HF_CHILD = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = tok(sys.argv[2])["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].tolist()
own = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "serving", "tasks", "config"))
print(json.dumps({"ids": ids, "logits": logits, "eos": tok.eos_token, "own_modules": own}))
"""


def test_every_registered_gpt_carries_a_hugging_face_export_that_loads_with_transformers_alone(project, staged,
                                                                                               tmp_path):
    import subprocess

    from tokenizers import Tokenizer

    params = staged()
    train(params)
    evaluate(params)
    version = register(params)["version"]
    client = mlflow.MlflowClient(params.register.tracking_uri, registry_uri=params.register.tracking_uri)
    run_id = client.get_model_version(params.register.model_name, str(version)).run_id
    hf = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="hf", dst_path=str(tmp_path),
                                             tracking_uri=params.register.tracking_uri)
    text = "The river keeps the stone"
    env = {"PATH": str(BIN), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.run([sys.executable, "-I", "-c", HF_CHILD, hf, text], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(child.stdout.splitlines()[-1])
    assert got["own_modules"] == [] and got["eos"] == "<|endoftext|>"  # transformers alone, no remote code
    tok = Tokenizer.from_file(str(params.preprocess.out_dir / "tokenizer.json"))
    assert got["ids"] == tok.encode(text).ids  # the same tokenizer
    model = load_generator(params.train.out_dir).eval()
    with torch.no_grad():
        ours = model(torch.tensor([got["ids"]]))[0]
    assert torch.allclose(torch.tensor(got["logits"]), ours, atol=1e-5)  # the product's logits


def test_every_registered_version_carries_an_onnx_export_that_runs_with_onnxruntime_alone(project, staged, tmp_path):
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    params = staged()
    train(params)
    evaluate(params)
    version = register(params)["version"]
    client = mlflow.MlflowClient(params.register.tracking_uri, registry_uri=params.register.tracking_uri)
    run_id = client.get_model_version(params.register.model_name, str(version)).run_id
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="onnx", dst_path=str(tmp_path),
                                                      tracking_uri=params.register.tracking_uri))
    manifest = json.loads((folder / "onnx.json").read_text())
    assert manifest["family"] == "gpt" and set(manifest["graphs"]) == {"logits"}
    entry = manifest["graphs"]["logits"]
    assert entry["parity"]["max_abs_diff"] <= entry["parity"]["tolerance"]
    tok = Tokenizer.from_file(str(folder / manifest["tokenizer"]))  # the export carries its tokenizer
    assert tok.encode("The river").ids == Tokenizer.from_file(str(params.preprocess.out_dir / "tokenizer.json")
                                                             ).encode("The river").ids
    ids = np.array([tok.encode("The river keeps the stone").ids] * 2, dtype=np.int64)
    logits = onnxruntime.InferenceSession(str(folder / entry["file"])).run(["logits"], {"input_ids": ids})[0]
    with torch.no_grad():
        ours = load_generator(params.train.out_dir).eval()(torch.from_numpy(ids)).numpy()
    assert np.abs(logits - ours).max() <= entry["parity"]["tolerance"]  # the product's logits
