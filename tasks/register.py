"""register: log the evaluated model to MLflow, register it as `challenger`, and promote it to `champion` when it
beats the current champion on `register.promote_metric` by `register.min_improvement` (`gate`). With
`register.promote: never` (sweeps) the version is registered and tagged only; the sweep gates its best.

Guards come first: a version whose memorization is above `register.max_memorization` or whose diversity is below
`register.min_diversity` never becomes champion, whatever its promote_metric; it stays challenger and its
`refused_by` tag (and the log) names the guard. Every version carries a data card and a model card
(registry/cards.py): as its description in the registry, and as `data_card.md` / `model_card.md` in the model's
artifacts and the run's `cards/`.

Every version carries its metrics (`metric.*`), the gate's decision and lineage tags (registry/lineage.py: git
commit, dvc.lock digest, data digest, Prefect flow run, DVC experiment).

The model is a models-from-code pyfunc (`serving/text_pyfunc.py`, `serving/image_pyfunc.py`) with the
`models` and `serving` packages as code, weights in
safetensors and the tokenizer as artifacts: loading it never unpickles anything.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from pathlib import Path

from config.catalog import (
    DATA_CARD_FILE,
    GRID_FILE,
    META_FILE,
    MODEL_CARD_FILE,
    RUN_FILE,
    SAMPLES_FILE,
    TOKENIZER_FILE,
)
from config.params import Params
from models.registry import IMAGE, TEXT, declaration
from registry.cards import data_card, guards, model_card
from registry.gate import current_champion, gate
from registry.lineage import lineage_tags
from runtime.io import read_json, read_jsonl, write_json
from serving import CODE_PATHS, pyfunc_file
from serving.signatures import requirements

log = logging.getLogger(__name__)


def _model_files(params: Params, scratch: Path) -> dict:
    """Return what `log_model` needs for the chosen generator's modality, and the evaluation files to attach."""
    data_dir, evaluation = params.preprocess.out_dir, params.evaluate.out_dir
    decl = declaration(params.model.name)
    if decl.modality is IMAGE:
        n_classes = read_json(data_dir / META_FILE).get("n_classes", 0)
        example = [{"n": 2, "seed": 0} | ({"class_label": 0} if decl.conditional and n_classes else {})]
        return {"python_model": str(pyfunc_file(decl.modality.serving_module)),
                "artifacts": {"generator": str(params.train.out_dir), "data_meta": str(data_dir / META_FILE)},
                "input_example": example,  # the signature comes from the pyfunc's type hints
                "pip_requirements": requirements(decl),
                "evaluation": sorted(p for d in (evaluation, params.evaluate.plots_dir) for p in d.iterdir()
                                     if p.is_file())}
    generator_dir = _generator_to_log(params, scratch)
    return {"python_model": str(pyfunc_file(decl.modality.serving_module)),
            "artifacts": {"generator": str(generator_dir), "tokenizer": str(data_dir / TOKENIZER_FILE),
                          "data_meta": str(data_dir / META_FILE)},
            "input_example": [{"prompt": "The ", "max_new_tokens": 8, "temperature": 0.0, "top_k": 0, "seed": 0}],
            "pip_requirements": requirements(decl, with_peft=generator_dir == params.train.out_dir and
                                                       params.model.lora is not None),
            "evaluation": [evaluation / SAMPLES_FILE, params.evaluate.plots_dir / GRID_FILE]}


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
              if params.model.modality is TEXT else
              {"image_mode": clean_cfg.image_mode, "min_image_size": clean_cfg.min_image_size})
    data = data_card(read_json(params.ingest.provenance_path), read_json(clean_cfg.metrics_path),
                     read_json(params.preprocess.metrics_path), policy)
    samples = []
    if params.model.modality is TEXT:
        samples = [r["text"] for r in read_jsonl(params.evaluate.out_dir / SAMPLES_FILE)][:3]
    card = model_card(params=params, name=params.register.model_name, metrics=metrics,
                      train_metrics=read_json(params.train.metrics_path), guard_list=guards(metrics, params.register),
                      lineage=lineage, data=data, samples=samples)
    paths = {"data_card": scratch / DATA_CARD_FILE, "model_card": scratch / MODEL_CARD_FILE}
    paths["data_card"].write_text(data, encoding="utf-8")
    paths["model_card"].write_text(card, encoding="utf-8")
    return paths


def register(params: Params) -> dict:
    """Log, register and (if it wins) promote the trained model; write the decision as metrics."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in the run's log
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from registry.tracking import connect, run_exists

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
        info = mlflow.pyfunc.log_model(name="model", code_paths=[str(p) for p in CODE_PATHS],
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
    from cli.stage import main

    main(register)
