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
Beside it, the run carries the generator as ONNX graphs with their manifest (`onnx/`, every family) and, for a
GPT, as a Hugging Face model (`hf/`): serving/exports.py.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from config.catalog import (
    CLEAN_FILE,
    CONTINUATIONS_FILE,
    DATA_CARD_FILE,
    DOCUMENT_SCORES_FILE,
    GRID_FILE,
    IMAGE_FEATURES_FILE,
    META_FILE,
    MODEL_CARD_FILE,
    PROTOCOL_FILE,
    RUN_FILE,
    SAMPLES_FILE,
    TOKENIZER_FILE,
)
from config.params import Params
from evaluation.protocol import METRICS_VERSION, protocol_digest
from models.registry import IMAGE, TEXT, declaration
from registry.cards import data_card, data_card_metadata, guards, hub_card, model_card, model_card_metadata
from registry.gate import current_champion, gate
from registry.lineage import lineage_tags
from runtime.errors import DataError, UserError
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
            # the protocol and per-document scores: what a later gate (a sweep's) compares a re-scored champion with
            "evaluation": [evaluation / f for f in (SAMPLES_FILE, CONTINUATIONS_FILE, PROTOCOL_FILE,
                                                     DOCUMENT_SCORES_FILE)] + [params.evaluate.plots_dir / GRID_FILE]}


def _generator_to_log(params: Params, scratch: Path) -> Path:
    """Return the generator directory to log: as trained, or with LoRA adapters merged into the weights."""
    if params.model.lora is None or params.register.lora_export == "adapter":
        return params.train.out_dir
    from models.base import load_generator

    merged = scratch / "generator"
    load_generator(params.train.out_dir).merged().save(merged)
    return merged


def _onnx_export(spec: dict, out: Path) -> Path:
    """Export the generator to be logged as ONNX graphs with their manifest (serving/exports.py) into `out`."""
    from models.base import load_generator
    from serving.exports import ParityError, onnx_export

    tokenizer = None
    if "tokenizer" in spec["artifacts"]:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(spec["artifacts"]["tokenizer"])
    start = time.perf_counter()
    try:
        onnx_export(load_generator(Path(spec["artifacts"]["generator"])), out, tokenizer=tokenizer)
    except ParityError as exc:
        raise DataError(str(exc)) from None
    log.info("register: ONNX export in %.1f s", time.perf_counter() - start)
    return out


def _write_cards(params: Params, metrics: dict, lineage: dict[str, str], versus: dict, data_digest: str,
                 scratch: Path) -> dict[str, Path]:
    """Write the data card and the model card of this version into `scratch` as Hugging Face Hub cards (YAML
    metadata, then markdown); return their paths by artifact key."""
    clean_cfg = params.clean
    policy = ({"pii": clean_cfg.pii, "min_chars": clean_cfg.min_chars, "max_chars": clean_cfg.max_chars}
              if params.model.modality is TEXT else
              {"image_mode": clean_cfg.image_mode, "min_image_size": clean_cfg.min_image_size})
    provenance = read_json(params.ingest.provenance_path)
    name = params.register.model_name
    data = data_card(provenance, read_json(clean_cfg.metrics_path), read_json(params.preprocess.metrics_path), policy)
    samples = []
    if params.model.modality is TEXT:
        samples = [r["text"] for r in read_jsonl(params.evaluate.out_dir / SAMPLES_FILE)][:3]
    card = model_card(params=params, name=name, metrics=metrics,
                      train_metrics=read_json(params.train.metrics_path), guard_list=guards(metrics, params.register),
                      lineage=lineage, data=data, samples=samples, versus=versus)
    meta = model_card_metadata(params=params, name=name, metrics=metrics, provenance=provenance,
                               protocol=versus["protocol"], protocol_digest=protocol_digest(versus["protocol"]),
                               data_digest=data_digest)
    paths = {"data_card": scratch / DATA_CARD_FILE, "model_card": scratch / MODEL_CARD_FILE}
    paths["data_card"].write_text(hub_card(data_card_metadata(provenance, name), data, dataset=True), encoding="utf-8")
    paths["model_card"].write_text(hub_card(meta, card), encoding="utf-8")
    return paths


def _card_body(path: Path) -> str:
    """Return a Hub card's markdown without its YAML metadata."""
    from huggingface_hub import ModelCard

    return ModelCard.load(path).text.lstrip("\n")


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
    # before this version exists: the champion re-scored on this evaluation's protocol (for the card and the gate)
    versus = (compare_with_champion(params, client, params.evaluate.out_dir) if cfg.promote == "gate" else
              {"champion_version": None, "comparison": None, "incomparable": None,  # a sweep gates its best later
               "protocol": read_json(params.evaluate.out_dir / PROTOCOL_FILE)})
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
        if params.model.name == "gpt":  # the Hugging Face format, for consumers outside this project
            from tokenizers import Tokenizer

            from models.base import load_generator
            from serving.exports import hf_export

            hf = hf_export(load_generator(Path(spec["artifacts"]["generator"])),
                           Tokenizer.from_file(spec["artifacts"]["tokenizer"]), Path(scratch) / "hf")
            mlflow.log_artifacts(str(hf), artifact_path="hf")
        mlflow.log_artifacts(str(_onnx_export(spec, Path(scratch) / "onnx")), artifact_path="onnx")  # every family
        cards = _write_cards(params, metrics, lineage, versus, data_digest, Path(scratch))
        for path in cards.values():
            mlflow.log_artifact(str(path), artifact_path="cards")
        spec["artifacts"] |= {key: str(path) for key, path in cards.items()}
        description = _card_body(cards["model_card"])  # the registry UI renders markdown, not the Hub's YAML
        info = mlflow.pyfunc.log_model(name="model", code_paths=[str(p) for p in CODE_PATHS],
                                       registered_model_name=cfg.model_name, **spec)
        run_id = run.info.run_id

    version = str(info.registered_model_version)
    for key, val in {f"metric.{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}.items():
        client.set_model_version_tag(cfg.model_name, version, key, str(val))
    tags = {"data_sha256": data_digest, "generator": params.model.name,
            "init_from": params.model.init_from or "scratch",
            "lora": "none" if params.model.lora is None else params.register.lora_export, **lineage}
    tags |= {"protocol": protocol_digest(versus["protocol"])}
    tags |= {f"protocol.{k}": str(v) for k, v in versus["protocol"].items()}
    for key, val in tags.items():
        client.set_model_version_tag(cfg.model_name, version, key, val)
    client.update_model_version(cfg.model_name, version, description=description)
    if cfg.promote == "gate":
        decision = gate(client, cfg, version, versus)
    else:
        client.set_model_version_tag(cfg.model_name, version, "decision", "not_gated")
        champion_version, _ = current_champion(client, cfg.model_name, cfg.promote_metric)
        decision = {"version": int(version), "promoted": False, "champion_version": champion_version and int(champion_version),
                    f"challenger_{cfg.promote_metric}": value if math.isfinite(value) else None}
        log.info("register: %s version %s registered without aliases (register.promote: never)", cfg.model_name, version)
    result = {**decision, "run_id": run_id}
    write_json(cfg.metrics_path, result)
    return result


# ------------------------------------------------------------------------------ the champion, re-scored


def _cache_file(params: Params, champion_version: str, protocol: dict, suffix: str) -> Path:
    from evaluation.protocol import protocol_digest

    cfg = params.register
    return cfg.rescore_cache_dir / f"{cfg.model_name}-v{champion_version}-{protocol_digest(protocol)}{suffix}"


def _champion_text_evidence(params: Params, champion_version: str, protocol: dict, prompts: list[str]) -> dict:
    from dataprep.tokenize import iter_split
    from evaluation.champion import Incomparable, load_registered, text_evidence
    from evaluation.protocol import digest_texts
    from runtime.device import pick_device

    cached = _cache_file(params, champion_version, protocol, ".json")
    if cached.exists():
        return read_json(cached)
    try:
        documents = list(iter_split(params.clean.out_dir / CLEAN_FILE, "test", params.preprocess))
    except UserError:
        raise Incomparable("the test documents it was evaluated on are not in this workspace") from None
    if digest_texts(documents) != protocol["test_sha256"]:
        raise Incomparable("this workspace's test split is not the one the challenger was evaluated on")
    py = load_registered(f"models:/{params.register.model_name}/{champion_version}")
    if not hasattr(py, "tokenizer"):
        raise Incomparable("the champion is not a text generator")
    evidence = text_evidence(py.model, py.tokenizer, documents, prompts, protocol["continuation_tokens"],
                             params.evaluate.batch_size, pick_device(params.train.device))
    write_json(cached, evidence)
    return evidence


def _champion_image_evidence(params: Params, champion_version: str, protocol: dict) -> dict:
    import numpy as np
    import torch

    from dataprep.tokenize import load_images
    from evaluation.champion import Incomparable, image_evidence, load_registered
    from evaluation.protocol import digest_arrays
    from evaluation.scoring import real_halves
    from models.classifier import WEIGHTS_FILE, load_classifier, to_unit
    from runtime.device import pick_device
    from runtime.io import atomic_path, sha256_file

    cached = _cache_file(params, champion_version, protocol, ".npz")
    if cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if sha256_file(params.classifier.out_dir / WEIGHTS_FILE) != protocol["extractor_sha256"]:
        raise Incomparable("the feature extractor in this workspace is not the challenger's")
    images, _ = load_images(params.preprocess.out_dir, "train")
    idx, _ = real_halves(len(images), protocol["n_images"], protocol["seed"])
    if len(idx) != protocol["n_images"] or digest_arrays(np.asarray(images[idx])) != protocol["real_sha256"]:
        raise Incomparable("this workspace's real images are not the ones the challenger was evaluated on")
    py = load_registered(f"models:/{params.register.model_name}/{champion_version}")
    if hasattr(py, "tokenizer"):
        raise Incomparable("the champion is a text generator")
    conditional = protocol["labels"] != "none"
    if bool(getattr(py.model, "conditional", False)) != conditional:
        raise Incomparable("one of the two is class-conditional and the other is not")
    device = pick_device(params.train.device)
    meta = read_json(params.preprocess.out_dir / META_FILE)
    real = to_unit(torch.from_numpy(np.asarray(images[idx])))
    try:
        evidence = image_evidence(py.model.to(device), load_classifier(params.classifier.out_dir, device), real,
                                  n=protocol["n_images"], seed=protocol["seed"], steps=protocol["sample_steps"],
                                  n_classes=meta.get("n_classes", 0), conditional=conditional)
    except (RuntimeError, ValueError, IndexError) as exc:  # another resolution, channel count or class count
        raise Incomparable(f"sampling it for this data failed ({str(exc).splitlines()[0][:160]})") from None
    with atomic_path(cached) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **evidence)
    return evidence


def compare_with_champion(params: Params, client, evidence_dir: Path) -> dict:
    """Re-score the current champion under the protocol of the evaluation in `evidence_dir` (evaluate's output,
    or a registered version's `evaluation/` artifacts) and compare it with that evaluation, paired.

    Returns {"champion_version": str | None, "comparison": Comparison dict | None, "incomparable": reason | None,
    "protocol": the challenger's protocol}. Never reads the champion's stored metrics."""
    import numpy as np

    from evaluation.champion import Incomparable, image_comparison, text_comparison

    cfg = params.register
    champion_version, _ = current_champion(client, cfg.model_name, cfg.promote_metric)
    protocol = read_json(evidence_dir / PROTOCOL_FILE)
    out = {"champion_version": champion_version, "comparison": None, "incomparable": None, "protocol": protocol}
    if champion_version is None:
        return out
    start = time.perf_counter()
    common = {"confidence": cfg.min_confidence, "n_resamples": cfg.bootstrap_samples, "seed": params.evaluate.seed}
    try:
        if protocol.get("modality") != params.model.modality.name:
            raise Incomparable(f"the evaluation is of {protocol.get('modality')} data, the generator makes "
                               f"{params.model.modality.name}")
        if protocol.get("metrics_version") != METRICS_VERSION:
            raise Incomparable(f"the evaluation used metric definitions v{protocol.get('metrics_version')}, this "
                               f"code v{METRICS_VERSION}")
        if params.model.modality is TEXT:
            records = read_jsonl(evidence_dir / CONTINUATIONS_FILE)
            champion = _champion_text_evidence(params, champion_version, protocol, [r["prompt"] for r in records])
            challenger = read_json(evidence_dir / DOCUMENT_SCORES_FILE) | {
                "generated": [r["generated"] for r in records], "tokenizer_sha256": protocol["tokenizer_sha256"]}
            comparison = text_comparison(cfg.promote_metric, cfg.greater_is_better, protocol, challenger, champion,
                                         [r["reference"] for r in records], **common)
        else:
            champion = _champion_image_evidence(params, champion_version, protocol)
            with np.load(evidence_dir / IMAGE_FEATURES_FILE, allow_pickle=False) as z:
                challenger = {"features": z["fake_features"], "logits": z["fake_logits"]}
                real = z["real_features"]
            comparison = image_comparison(cfg.promote_metric, cfg.greater_is_better, protocol, challenger, champion,
                                          real, **common)
    except Incomparable as exc:
        out["incomparable"] = str(exc)
        log.warning("register: champion version %s cannot be compared with this model: %s", champion_version, exc)
        return out
    out["comparison"] = comparison.to_dict() | {"seconds": round(time.perf_counter() - start, 3)}
    c = out["comparison"]
    log.info("register: champion v%s re-scored on the challenger's protocol: %s %.4g vs challenger %.4g; gain %.4g, "
             "%d%% interval [%.4g, %.4g], p=%.3g (%d %s, %.1f s)", champion_version, c["metric"], c["champion"],
             c["challenger"], c["gain"], round(100 * c["confidence"]), c["ci_low"], c["ci_high"], c["p_value"],
             c["n_units"], "documents" if cfg.promote_metric.startswith("test_") else
             "prompts" if params.model.modality is TEXT else "images", c["seconds"])
    return out


def gate_version(params: Params, client, version: str) -> dict:
    """Gate an already registered version (a sweep's best): compare the champion, re-scored, with the evaluation
    logged with that version, then decide as `register` does."""
    import mlflow

    run_id = client.get_model_version(params.register.model_name, version).run_id
    with tempfile.TemporaryDirectory() as scratch:
        evidence = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation",
                                                            dst_path=scratch))
        versus = compare_with_champion(params, client, evidence)
    return gate(client, params.register, version, versus)


if __name__ == "__main__":
    from cli.stage import main

    main(register)
