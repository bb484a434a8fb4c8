"""Data and model cards: markdown documents attached to every registered model version.

The data card says what a model was trained on and under which terms (ingest's provenance record), and what
cleaning removed (clean's counts, personal data included). The model card adds what was built, how it scored,
which guards it passed, samples, lineage, intended use and limits. Pure functions of the stages' records: the
register stage reads those records and logs the cards.

Both are Hugging Face Hub cards: `hub_card` puts the YAML metadata the Hub renders and filters on (licence,
datasets, task, and for the model a `model-index` with the evaluation results and their protocol) in front of the
markdown, built with `huggingface_hub`'s `ModelCardData` / `DatasetCardData` and read back by `ModelCard` /
`DatasetCard` (`huggingface_hub.ModelCard.load(path).data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.params import Params, RegisterParams


@dataclass(frozen=True)
class Guard:
    """A check a version must pass to become champion, whatever its promote_metric."""

    name: str  # the evaluate metric checked
    value: float | None
    limit: float
    greater_is_better: bool
    param: str  # the params key holding the limit

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.limit if self.greater_is_better else self.value <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.greater_is_better else "<="
        if self.value is None:
            return f"{self.name} was not measured (needs {sign} {self.param} {self.limit:g})"
        verdict = "passes" if self.passed else "fails"
        return f"{self.name} {self.value:.4g} {verdict} {self.param} ({sign} {self.limit:g})"


def guards(metrics: dict[str, Any], cfg: RegisterParams) -> list[Guard]:
    """Return the promotion guards evaluated on a version's metrics (evaluate's, or its `metric.*` tags)."""

    def value(key: str) -> float | None:
        raw = metrics.get(key)
        return None if raw is None else float(raw)

    return [Guard("memorization", value("memorization"), cfg.max_memorization, False, "register.max_memorization"),
            Guard("diversity", value("diversity"), cfg.min_diversity, True, "register.min_diversity")]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def data_card(provenance: dict, clean_metrics: dict, preprocess_metrics: dict, clean_policy: dict) -> str:
    """Return the data card: sources with licence, retrieval time, size and digest; what cleaning removed; splits."""
    lines = ["# Data card", "",
             f"Modality: {provenance['modality']}. Retrieved {provenance['retrieved_at']} (UTC).", "",
             "## Sources", ""]
    lines += _table(["source", "URI", "licence", "retrieved", "bytes", "items", "sha256"],
                    [[r["source"], r["uri"], r["license"], r["retrieved_at"], r["n_bytes"], r["n_items"],
                      r["sha256"][:16]] for r in provenance["sources"]])
    undeclared = provenance.get("undeclared_licenses") or []
    if undeclared:
        lines += ["", (f"**Licence not declared** for {', '.join(undeclared)}: set `ingest.licenses` before "
                       "distributing this model.")]
    lines += ["", "## Cleaning", ""]
    lines += [f"Policy: {', '.join(f'`clean.{k}: {v}`' for k, v in clean_policy.items())}.", ""]
    lines += _table(["count", "value"], [[k, v] for k, v in sorted(clean_metrics.items())])
    pii = {k.removeprefix("pii_"): v for k, v in clean_metrics.items() if k.startswith("pii_") and k != "pii_total"}
    if pii:
        found = ", ".join(f"{v} {k}" for k, v in sorted(pii.items()) if v) or "none"
        lines += ["", f"Personal data found: {found} ({clean_policy.get('pii', 'n/a')})."]
    lines += ["", "## Splits", ""]
    lines += _table(["split statistic", "value"], [[k, v] for k, v in sorted(preprocess_metrics.items())])
    return "\n".join(lines) + "\n"


INTENDED_USE = {
    "text": ("Research and prototyping of text generation on the corpus above: sampling continuations, comparing "
             "generators and training settings. Not for producing factual statements, advice, or text published "
             "without review."),
    "image": ("Research and prototyping of image generation on the images above: sampling new images (of a class, "
              "for conditional generators), comparing generators and settings. Not for depicting real people or for "
              "any decision about them."),
}
LIMITS = {
    "text": ("A small model trained on one corpus: it reproduces the corpus' style, topics and errors, invents facts, "
             "and can repeat training text verbatim (see memorization). Scores are on held-out text from the same "
             "corpus, not on other domains."),
    "image": ("A small generator trained on one dataset: it reproduces that dataset's content and biases. FID, KID "
              "and IS use the pipeline's own classifier as feature extractor, so they compare models trained on this "
              "data only, not published values computed with Inception v3."),
}


def comparison_lines(metric: str, versus: dict[str, Any]) -> list[str]:
    """Markdown lines: this model against the champion re-scored on this model's evaluation protocol."""
    c = versus.get("comparison")
    if versus.get("incomparable"):
        return [f"Champion version {versus['champion_version']} could not be compared: {versus['incomparable']}."]
    if not c:
        return ["No champion to compare with." if versus.get("champion_version") is None else "Not compared."]
    pct = round(100 * c["confidence"])
    return [(f"Champion version {versus['champion_version']}, re-scored on this model's test data and evaluation "
             f"protocol (never its stored numbers), paired over {c['n_units']} units, {c['n_resamples']} bootstrap "
             "resamples:"), "",
            *_table(["metric", "this model", "champion (re-scored)", "gain", f"{pct}% interval of the gain", "p"],
                    [[metric, _fmt(c["challenger"]), _fmt(c["champion"]), _fmt(c["gain"]),
                      f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]", _fmt(c["p_value"])]])]


def model_card(*, params: Params, name: str, metrics: dict[str, Any], train_metrics: dict[str, Any],
               guard_list: list[Guard], lineage: dict[str, str], data: str, samples: list[str],
               versus: dict[str, Any] | None = None) -> str:
    """Return the model card: the model, its scores and guards, samples, lineage, use and limits, the data card."""
    modality = params.model.modality.name
    arch = params.model.hparams.architecture()
    lines = [f"# Model card: {name}", "",
             (f"Generator `{params.model.name}` ({modality}), initialised from {params.model.init_from or 'scratch'}"
              f"{', LoRA adapters' if params.model.lora else ''}; {_fmt(train_metrics.get('n_params'))} parameters, "
              f"{_fmt(train_metrics.get('steps'))} steps on {_fmt(train_metrics.get('device'))}."), "",
             "Architecture: " + ", ".join(f"`{k}={v}`" for k, v in arch.items()) + ".", "",
             "## Intended use", "", INTENDED_USE[modality], "", "## Limits", "", LIMITS[modality], "",
             "## Guards", "", ("A version becomes champion only if every guard passes and it beats the champion on "
                              f"`{params.register.promote_metric}`."), ""]
    lines += [f"- {'PASS' if g.passed else 'FAIL'}: {g.describe()}" for g in guard_list]
    lines += ["", "## Against the champion", "", *comparison_lines(params.register.promote_metric, versus or {})]
    lines += ["", "## Evaluation", ""]
    lines += _table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items()) if not isinstance(v, (dict, list))])
    lines += ["", "## Samples", ""]
    if modality == "text":
        for text in samples:
            lines += ["```text", text.replace("```", "'''"), "```", ""]
    else:
        lines += [("Fixed-seed samples: `evaluation/samples.png`; the samples closest to a training image over that "
                   "image: `evaluation/nearest.png` (run artifacts)."), ""]
    lines += ["## Lineage", ""]
    lines += _table(["tag", "value"], [[k, v] for k, v in sorted(lineage.items())])
    lines += ["", data.replace("# Data card", "## Data card", 1).replace("\n## ", "\n### ")]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------ Hub metadata

# Licence identifiers the Hub knows (its `license:` values, lower case); anything else is `other` + `license_name`.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m",
    "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear",
    "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0",
    "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
    "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3", "unknown", "other"})
TASKS = {"text": "text-generation", "image": "unconditional-image-generation"}
SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def hub_license(provenance: dict) -> dict[str, str]:
    """Return the Hub licence fields of data under the sources' terms: its identifier when all sources share one
    the Hub knows; `other` with `license_name` for one it does not (or several, joined by `+`); `unknown` when a
    source's terms were not declared."""
    terms = {r["license"].split()[0].lower() for r in provenance["sources"]}  # "PSF-2.0 (Python docs...)" -> psf-2.0
    if "undeclared" in terms or not terms:
        return {"license": "unknown"}
    if len(terms) == 1 and (only := next(iter(terms))) in HUB_LICENSES:
        return {"license": only}
    return {"license": "other", "license_name": "+".join(sorted(terms))}


def hub_datasets(provenance: dict) -> list[str]:
    """Return the Hub dataset ids among the sources (`hf:<id>[:split...]`); local files and URLs have none."""
    ids = [r["source"].removeprefix("hf:").split(":")[0] for r in provenance["sources"] if r["source"].startswith("hf:")]
    return sorted(set(ids))


def _size_category(n: int) -> str:
    return next((label for limit, label in SIZE_BUCKETS if n < limit), "n>1T")


def data_card_metadata(provenance: dict, name: str) -> dict[str, Any]:
    """Return the data card's Hub metadata: licence, task, size bucket, the Hub datasets it was built from."""
    from huggingface_hub import DatasetCardData

    modality = provenance["modality"]
    return DatasetCardData(
        pretty_name=f"{name} training data", task_categories=[TASKS[modality]],
        size_categories=[_size_category(sum(r["n_items"] for r in provenance["sources"]))],
        source_datasets=hub_datasets(provenance) or None, tags=["genpipe", modality],
        **hub_license(provenance)).to_dict()


def model_card_metadata(*, params: Params, name: str, metrics: dict[str, Any], provenance: dict,
                        protocol: dict[str, Any], protocol_digest: str, data_digest: str) -> dict[str, Any]:
    """Return the model card's Hub metadata: licence (the data's), datasets, task, library, and a `model-index` with
    every evaluation metric the gate can use, on the test split of this data (revision: its digest), each carrying
    the evaluation protocol's digest; the protocol itself as `eval_protocol`."""
    from huggingface_hub import EvalResult, ModelCardData

    modality = params.model.modality
    task = TASKS[modality.name]
    hub_ids = hub_datasets(provenance)
    results = [EvalResult(task_type=task, dataset_type=hub_ids[0] if len(hub_ids) == 1 else "local",
                          dataset_name=f"{name} corpus {data_digest[:12]}", dataset_split="test",
                          dataset_revision=data_digest[:16], metric_type=metric, metric_name=metric,
                          metric_value=float(metrics[metric]), metric_config=protocol_digest)
               for metric in modality.promote_metrics if isinstance(metrics.get(metric), (int, float))]
    return ModelCardData(
        model_name=name, library_name="transformers" if params.model.name == "gpt" else "pytorch",
        pipeline_tag=task, datasets=hub_ids or None, eval_results=results or None,
        tags=["genpipe", params.model.name, modality.name] + (["lora"] if params.model.lora else []),
        eval_protocol={k: str(v) for k, v in sorted(protocol.items())}, **hub_license(provenance)).to_dict()


def hub_card(metadata: dict[str, Any], body: str, *, dataset: bool = False) -> str:
    """Return `body` as a Hub card: the YAML `metadata` in front, checked by parsing it as the Hub does."""
    import yaml
    from huggingface_hub import DatasetCard, ModelCard

    text = "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    (DatasetCard if dataset else ModelCard)(text, ignore_metadata_errors=False)  # raises on metadata it rejects
    return text
