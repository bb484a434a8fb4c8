"""Data and model cards: markdown documents attached to every registered model version.

The data card says what a model was trained on and under which terms (ingest's provenance record), and what
cleaning removed (clean's counts, personal data included). The model card adds what was built, how it scored,
which guards it passed, samples, lineage, intended use and limits. Pure functions of the stages' records: the
register stage reads those records and logs the cards.
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
