"""The champion guards and the cards: a model overfit on a tiny corpus is refused champion by the memorization
guard, and every registered version carries its data card and model card, read back from the registry."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from tasks.clean import clean
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.preprocess import preprocess
from tasks.register import register
from tasks.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_memorable_corpus(root: Path) -> Path:
    """Ten short records, each one random phrase said four times: a 2-layer GPT learns them by heart in 200 steps."""
    rng = random.Random(0)
    words = "river stone light paper garden window cloud music number signal green yellow orange purple".split()
    docs = []
    for i in range(10):
        phrase = " ".join(rng.choice(words) for _ in range(8))
        docs.append(f"Record {i}: " + " ".join([phrase + "."] * 4))
    docs[0] += " Questions to ops.team@example.com please."  # personal data: redacted and counted in the data card
    path = root / "data" / "inputs" / "records.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_an_overfit_model_is_refused_champion_by_the_memorization_guard_and_carries_its_cards(project):
    import mlflow

    tiny_memorable_corpus(project.root)
    params = project.make_params(
        ingest={"sources": ["data/inputs/records.jsonl"], "licenses": {"data/inputs/records.jsonl": "CC0-1.0"}},
        preprocess={"val_fraction": 0.2, "test_fraction": 0.2},
        model={"gpt": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0}},
        train={"max_steps": 200, "eval_interval": 200, "warmup_steps": 10, "batch_size": 8, "lr": 0.01},
        evaluate={"n_samples": 8, "sample_tokens": 48, "memorization_chars": 40},
        register={"max_memorization": 0.5, "min_diversity": 0.0})
    for stage in (ingest, clean, preprocess, train):
        stage(params)
    metrics = evaluate(params)
    assert metrics["memorization"] > 0.5 and metrics["memorization_longest_chars"] >= 40
    samples = [json.loads(line) for line in (params.evaluate.out_dir / "samples.jsonl").read_text().splitlines()]
    assert max(s["longest_copied_chars"] for s in samples) == metrics["memorization_longest_chars"]

    result = register(params)
    assert not result["promoted"] and result["decision"] == "refused_by_guard"
    (why,) = result["refused_by"]
    assert why.startswith(f"memorization {metrics['memorization']:.4g} fails register.max_memorization (<= 0.5)")

    mlflow.set_tracking_uri(params.register.tracking_uri)
    client = mlflow.MlflowClient()
    name = params.register.model_name
    version = client.get_model_version_by_alias(name, "challenger")
    assert version.tags["decision"] == "refused_by_guard" and version.tags["refused_by"] == why
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, "champion")  # refused: no champion at all

    # The cards, read back from the registry: the version's description, and files in the model and in the run.
    card = version.description
    assert card.startswith(f"# Model card: {name}\n") and f"- FAIL: {why}" in card
    assert "- PASS: diversity" in card and "```text\nRecord" in card  # a sample, fenced
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}"))
    hub = ModelCard.load(model_dir / "artifacts" / "model_card.md")  # a Hub card: YAML metadata, then the markdown
    assert hub.text.lstrip("\n") == card
    meta = hub.data.to_dict()
    assert meta["license"] == "cc0-1.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == "transformers" and {"genpipe", "gpt", "text"} <= set(meta["tags"])
    scores = {r.metric_type: r for r in hub.data.eval_results}
    assert set(scores) == {"test_bpb", "test_perplexity", "bleu", "rouge_l"}
    assert scores["test_bpb"].metric_value == pytest.approx(metrics["test_bpb"])
    assert scores["test_bpb"].dataset_split == "test" and scores["test_bpb"].metric_config == version.tags["protocol"]
    assert meta["eval_protocol"]["metrics_version"] == version.tags["protocol.metrics_version"]
    data_hub = DatasetCard.load(model_dir / "artifacts" / "data_card.md")
    assert data_hub.data.to_dict()["license"] == "cc0-1.0"
    assert data_hub.data.to_dict()["task_categories"] == ["text-generation"]
    data = data_hub.text
    assert "| CC0-1.0 |" in card.split("\n## Data card\n")[1]  # the model card embeds the data card
    assert "| data/inputs/records.jsonl |" in data and "| CC0-1.0 |" in data and "Licence not declared" not in data
    assert "Personal data found: 1 email (redact)." in data
    run_cards = {a.path for a in client.list_artifacts(version.run_id, "cards")}
    assert run_cards == {"cards/data_card.md", "cards/model_card.md"}
