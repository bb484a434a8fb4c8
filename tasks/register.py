"""register: log the evaluated model to MLflow, register it as `challenger`, and promote it to `champion` when it
beats the current champion on `register.promote_metric` by `register.min_improvement` (`gate`). With
`register.promote: never` (sweeps) the version is registered and tagged only; the sweep gates its best.

Guards come first: a version whose memorization is above `register.max_memorization` or whose diversity is below
`register.min_diversity` never becomes champion, whatever its promote_metric; it stays challenger and its
`refused_by` tag (and the log) names the guard. Every version carries a data card and a model card
(tasks/cards.py): as its description in the registry, and as `data_card.md` / `model_card.md` in the model's
artifacts and the run's `cards/`.

Every version carries its metrics (`metric.*`), the gate's decision and lineage tags (tasks/lineage.py: git
commit, dvc.lock digest, data digest, Prefect flow run, DVC experiment).

The model is a models-from-code pyfunc (`models/text_pyfunc.py`) with the `models` package as code, weights in
safetensors and the tokenizer as artifacts: loading it never unpickles anything.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from pathlib import Path

from tasks.cards import data_card, guards, model_card
from tasks.io import read_json, read_jsonl, write_json
from tasks.lineage import lineage_tags
from tasks.params import Params, RegisterParams
from tasks.preprocess import META_FILE, TOKENIZER_FILE
from tasks.train import RUN_FILE

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
PYFUNC_FILE = MODELS_DIR / "text_pyfunc.py"
IMAGE_PYFUNC_FILE = MODELS_DIR / "image_pyfunc.py"
CHAMPION, CHALLENGER = "champion", "challenger"


# ---------------------------------------------------------------------------------------------------- pure logic


def should_promote(challenger: float, champion: float | None, greater_is_better: bool, min_improvement: float) -> bool:
    """Decide whether a challenger takes the champion alias."""
    if champion is None or not math.isfinite(champion):
        return math.isfinite(challenger)
    if not math.isfinite(challenger):
        return False
    gain = challenger - champion if greater_is_better else champion - challenger
    return gain > min_improvement


# ---------------------------------------------------------------------------------------------------- stage


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("string", "prompt"),
        ColSpec("long", "max_new_tokens", required=False),
        ColSpec("double", "temperature", required=False),
        ColSpec("long", "top_k", required=False),
        ColSpec("long", "seed", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "text")]))


def _image_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("long", "n"),
        ColSpec("long", "seed", required=False),
        ColSpec("long", "class_label", required=False),
        ColSpec("long", "steps", required=False),
        ColSpec("long", "scale", required=False),
    ])
    outputs = Schema([ColSpec("string", "image"), ColSpec("long", "index"), ColSpec("long", "class_label"),
                      ColSpec("long", "seed")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements(with_peft: bool) -> list[str]:
    from importlib.metadata import version

    packages = ["torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas"] + ["peft"] * with_peft
    return [f"{p}=={version(p)}" for p in packages]


def _image_requirements(generator: str) -> list[str]:
    from importlib.metadata import version

    packages = ["torch", "safetensors", "mlflow", "pandas", "numpy", "pillow"] + ["diffusers"] * (generator == "ddpm")
    return [f"{p}=={version(p)}" for p in packages]


def _model_files(params: Params, scratch: Path) -> dict:
    """Return what `log_model` needs for the chosen generator's modality, and the evaluation files to attach."""
    data_dir, evaluation = params.preprocess.out_dir, params.evaluate.out_dir
    if params.model.modality == "image":
        n_classes = read_json(data_dir / META_FILE).get("n_classes", 0)
        example = {"n": [2], "seed": [0]} | ({"class_label": [0]} if params.model.name == "cdcgan" and n_classes
                                             else {})
        return {"python_model": str(IMAGE_PYFUNC_FILE),
                "artifacts": {"generator": str(params.train.out_dir), "data_meta": str(data_dir / META_FILE)},
                "signature": _image_signature(), "input_example": example,
                "pip_requirements": _image_requirements(params.model.name),
                "evaluation": sorted(p for p in evaluation.iterdir() if p.is_file())}
    generator_dir = _generator_to_log(params, scratch)
    return {"python_model": str(PYFUNC_FILE),
            "artifacts": {"generator": str(generator_dir), "tokenizer": str(data_dir / TOKENIZER_FILE),
                          "data_meta": str(data_dir / META_FILE)},
            "signature": _signature(),
            "input_example": {"prompt": ["The "], "max_new_tokens": [8], "temperature": [0.0], "top_k": [0],
                              "seed": [0]},
            "pip_requirements": _requirements(with_peft=generator_dir == params.train.out_dir and
                                              params.model.lora is not None),
            "evaluation": [evaluation / "samples.jsonl"]}


def _generator_to_log(params: Params, scratch: Path) -> Path:
    """Return the generator directory to log: as trained, or with LoRA adapters merged into the weights."""
    if params.model.lora is None or params.register.lora_export == "adapter":
        return params.train.out_dir
    from models.base import load_generator

    merged = scratch / "generator"
    load_generator(params.train.out_dir).merged().save(merged)
    return merged


def _write_cards(params: Params, metrics: dict, lineage: dict[str, str], scratch: Path) -> dict[str, Path]:
    """Write the data card and the model card of this version into `scratch`; return their paths by artifact key."""
    clean_cfg = params.clean
    policy = ({"pii": clean_cfg.pii, "min_chars": clean_cfg.min_chars, "max_chars": clean_cfg.max_chars}
              if params.model.modality == "text" else
              {"image_mode": clean_cfg.image_mode, "min_image_size": clean_cfg.min_image_size})
    data = data_card(read_json(params.ingest.provenance_path), read_json(clean_cfg.metrics_path),
                     read_json(params.preprocess.metrics_path), policy)
    samples = []
    if params.model.modality == "text":
        samples = [r["text"] for r in read_jsonl(params.evaluate.out_dir / "samples.jsonl")][:3]
    card = model_card(params=params, name=params.register.model_name, metrics=metrics,
                      train_metrics=read_json(params.train.metrics_path), guard_list=guards(metrics, params.register),
                      lineage=lineage, data=data, samples=samples)
    paths = {"data_card": scratch / "data_card.md", "model_card": scratch / "model_card.md"}
    paths["data_card"].write_text(data, encoding="utf-8")
    paths["model_card"].write_text(card, encoding="utf-8")
    return paths


def current_champion(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """Return the champion's version and its value of `metric`, or (None, None) when there is no champion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = mv.tags.get(f"metric.{metric}")
    return mv.version, float(value) if value is not None else None


def gate(client, cfg: RegisterParams, version: str) -> dict:
    """Make `version` the challenger and promote it to champion when it beats the current one; record why.

    The version's metrics are read from its `metric.*` tags, so a sweep can gate any registered version.
    """
    tags = client.get_model_version(cfg.model_name, version).tags
    raw = tags.get(f"metric.{cfg.promote_metric}")
    value = float("nan") if raw is None else float(raw)
    champion_version, champion_value = current_champion(client, cfg.model_name, cfg.promote_metric)
    refused = [g.describe() for g in guards({k.removeprefix("metric."): v for k, v in tags.items()
                                             if k.startswith("metric.")}, cfg) if not g.passed]
    promote = not refused and should_promote(value, champion_value, cfg.greater_is_better, cfg.min_improvement)
    decision = "promoted" if promote else "refused_by_guard" if refused else "kept_champion"
    for key, val in {"decision": decision, "promote_metric": cfg.promote_metric, "challenger_value": str(value),
                     "champion_version_before": str(champion_version), "champion_value_before": str(champion_value),
                     "min_improvement": str(cfg.min_improvement), "refused_by": "; ".join(refused) or "none"}.items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    if refused:
        log.warning("register: %s version %s refused champion by guard: %s", cfg.model_name, version,
                    "; ".join(refused))
    log.info("register: %s version %s (%s %.4f vs champion %s: %s) -> %s", cfg.model_name, version,
             cfg.promote_metric, value, champion_version, champion_value, decision)
    return {"version": int(version), "promoted": promote, "decision": decision, "refused_by": refused,
            "champion_version": int(version) if promote else (champion_version and int(champion_version)),
            f"challenger_{cfg.promote_metric}": value if math.isfinite(value) else None,  # JSON has no NaN
            f"champion_{cfg.promote_metric}_before": champion_value}


def register(params: Params) -> dict:
    """Log, register and (if it wins) promote the trained model; write the decision as metrics."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from tasks.tracking import connect, run_exists

    cfg = params.register
    experiment_id = connect(cfg)
    client = mlflow.MlflowClient()
    metrics = read_json(params.evaluate.metrics_path)
    data_dir = params.preprocess.out_dir
    run_id = read_json(params.train.out_dir / RUN_FILE).get("run_id")
    history = read_json(params.train.plots_path)
    data_digest = read_json(params.ingest.metrics_path)["corpus_sha256"]
    value = metrics.get(cfg.promote_metric)
    value = float("nan") if value is None else float(value)

    lineage = lineage_tags(params.root)
    resumed = run_exists(run_id)
    with tempfile.TemporaryDirectory() as scratch, mlflow.start_run(run_id=run_id if resumed else None, experiment_id=experiment_id) as run:
        if not resumed:  # training was logged elsewhere (or restored from DVC's cache): backfill its curve
            mlflow.log_params({"model.name": params.model.name,
                               **{f"model.{k}": v for k, v in params.model.hparams.architecture().items()}})
            for row in history:
                mlflow.log_metrics({"train_loss": row["train_loss"], "val_loss": row["val_loss"]}, step=row["step"])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"data_sha256": data_digest, **lineage})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": it is a local path
            source = resolve_dataset_source(str(data_dir))
        mlflow.log_input(MetaDataset(source, name="corpus", digest=data_digest[:16]), context="training")
        spec = _model_files(params, Path(scratch))
        for path in spec.pop("evaluation"):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        cards = _write_cards(params, metrics, lineage, Path(scratch))
        for path in cards.values():
            mlflow.log_artifact(str(path), artifact_path="cards")
        spec["artifacts"] |= {key: str(path) for key, path in cards.items()}
        description = cards["model_card"].read_text(encoding="utf-8")
        info = mlflow.pyfunc.log_model(name="model", code_paths=[str(MODELS_DIR)],
                                       registered_model_name=cfg.model_name, **spec)
        run_id = run.info.run_id

    version = str(info.registered_model_version)
    for key, val in {f"metric.{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}.items():
        client.set_model_version_tag(cfg.model_name, version, key, str(val))
    tags = {"data_sha256": data_digest, "generator": params.model.name,
            "init_from": params.model.init_from or "scratch",
            "lora": "none" if params.model.lora is None else params.register.lora_export, **lineage}
    for key, val in tags.items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    client.update_model_version(cfg.model_name, version, description=description)
    if cfg.promote == "gate":
        decision = gate(client, cfg, version)
    else:
        client.set_model_version_tag(cfg.model_name, version, "decision", "not_gated")
        champion_version, _ = current_champion(client, cfg.model_name, cfg.promote_metric)
        decision = {"version": int(version), "promoted": False, "champion_version": champion_version and int(champion_version),
                    f"challenger_{cfg.promote_metric}": value if math.isfinite(value) else None}
        log.info("register: %s version %s registered without aliases (register.promote: never)", cfg.model_name, version)
    result = {**decision, "run_id": run_id}
    write_json(cfg.metrics_path, result)
    return result


if __name__ == "__main__":
    from tasks.cli import main

    main(register)
