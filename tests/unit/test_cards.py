"""Data and model cards, and the promotion guards they report."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from config.params import parse_params
from registry.cards import (
    data_card,
    data_card_metadata,
    guards,
    hub_card,
    hub_license,
    model_card,
    model_card_metadata,
)

PROVENANCE = {
    "modality": "text", "retrieved_at": "2026-11-23T10:00:00+00:00", "undeclared_licenses": ["data/inputs/x.txt"],
    "sources": [
        {"source": "embedded:pydoc", "uri": "embedded:pydoc", "license": "PSF-2.0", "n_bytes": 466273, "n_items": 377,
         "retrieved_at": "2026-11-23T10:00:00+00:00", "sha256": "ab" * 32},
        {"source": "data/inputs/x.txt", "uri": "/p/data/inputs/x.txt", "license": "undeclared", "n_bytes": 10,
         "n_items": 1, "retrieved_at": "2026-11-23T10:00:00+00:00", "sha256": "cd" * 32},
    ],
}
CLEAN = {"documents_in": 378, "documents_out": 359, "pii_email": 3, "pii_phone": 0, "pii_total": 3}


def test_guards_pass_at_their_limits_fail_beyond_them_and_fail_when_not_measured():
    cfg = parse_params({"register": {"max_memorization": 0.2, "min_diversity": 0.5}}, Path(".")).register
    at_limits = {g.name: g for g in guards({"memorization": 0.2, "diversity": 0.5}, cfg)}
    assert at_limits["memorization"].passed and at_limits["diversity"].passed
    beyond = {g.name: g for g in guards({"memorization": "0.25", "diversity": 0.49}, cfg)}  # tags are strings
    assert not beyond["memorization"].passed and not beyond["diversity"].passed
    assert beyond["memorization"].describe() == "memorization 0.25 fails register.max_memorization (<= 0.2)"
    missing = {g.name: g for g in guards({}, cfg)}
    assert not missing["diversity"].passed and "not measured" in missing["diversity"].describe()


def test_data_card_lists_every_source_with_its_licence_and_flags_undeclared_ones():
    card = data_card(PROVENANCE, CLEAN, {"train_n_documents": 324}, {"pii": "redact"})
    assert "| embedded:pydoc | embedded:pydoc | PSF-2.0 | 2026-11-23T10:00:00+00:00 | 466273 | 377 | abababab" in card
    assert "**Licence not declared** for data/inputs/x.txt" in card
    assert "Personal data found: 3 email (redact)." in card
    assert "| train_n_documents | 324 |" in card


def test_model_card_shows_guards_metrics_samples_and_embeds_the_data_card():
    params = parse_params({"register": {"max_memorization": 0.1}}, Path("."))
    metrics = {"test_bpb": 1.5, "memorization": 0.25, "diversity": 0.8}
    card = model_card(params=params, name="text-generator", metrics=metrics, train_metrics={"n_params": 1000},
                      guard_list=guards(metrics, params.register), lineage={"git_commit": "abc"},
                      data=data_card(PROVENANCE, CLEAN, {}, {"pii": "redact"}), samples=["hello ``` world"])
    assert card.startswith("# Model card: text-generator\n")
    assert "- FAIL: memorization 0.25 fails register.max_memorization (<= 0.1)" in card
    assert "- PASS: diversity 0.8 passes register.min_diversity (>= 0.3)" in card
    assert "| test_bpb | 1.5 |" in card and "| git_commit | abc |" in card
    assert "```text\nhello ''' world\n```" in card  # a sample cannot close the fence early
    assert "## Data card" in card and "### Sources" in card and "## Intended use" in card and "## Limits" in card


def test_hub_licence_is_the_shared_identifier_other_with_a_name_or_unknown_when_undeclared():
    one = {"sources": [{"source": "a", "license": "CC-BY-4.0 (UCI digits)"}, {"source": "b", "license": "cc-by-4.0"}]}
    assert hub_license(one) == {"license": "cc-by-4.0"}
    assert hub_license({"sources": [{"source": "a", "license": "PSF-2.0 (Python docs)"}]}) == {
        "license": "other", "license_name": "psf-2.0"}
    mixed = {"sources": [{"source": "a", "license": "MIT"}, {"source": "b", "license": "CC0-1.0"}]}
    assert hub_license(mixed) == {"license": "other", "license_name": "cc0-1.0+mit"}
    assert hub_license(PROVENANCE) == {"license": "unknown"}  # one source's terms were not declared


def test_model_card_metadata_reads_back_through_huggingface_hub_with_results_and_protocol():
    params = parse_params({}, Path("."))
    metrics = {"test_bpb": 1.5, "test_perplexity": 30.0, "bleu": 0.1, "memorization": 0.0, "n": 3}
    provenance = {"modality": "text", "sources": [
        {"source": "hf:wikitext:train", "license": "CC-BY-SA-4.0", "n_items": 1200},
        {"source": "embedded:pydoc", "license": "CC-BY-SA-4.0", "n_items": 300}]}
    meta = model_card_metadata(params=params, name="text-generator", metrics=metrics, provenance=provenance,
                               protocol={"metrics_version": 3, "test_sha256": "ff"}, protocol_digest="d1g",
                               data_digest="ab" * 32)
    body = model_card(params=params, name="text-generator", metrics=metrics, train_metrics={}, guard_list=[],
                      lineage={}, data="# Data card\n", samples=[])
    card = ModelCard(hub_card(meta, body))
    assert card.text.lstrip("\n") == body
    data = card.data.to_dict()
    assert data["license"] == "cc-by-sa-4.0" and data["datasets"] == ["wikitext"]
    assert data["pipeline_tag"] == "text-generation" and data["eval_protocol"] == {"metrics_version": "3",
                                                                                   "test_sha256": "ff"}
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"test_bpb", "test_perplexity", "bleu"}  # the gate's metrics that were measured
    assert results["test_bpb"].metric_value == 1.5 and results["test_bpb"].metric_config == "d1g"
    assert results["bleu"].dataset_type == "wikitext" and results["bleu"].dataset_revision == "ab" * 8

    dataset = DatasetCard(hub_card(data_card_metadata(provenance, "text-generator"), "# Data card\n", dataset=True))
    assert dataset.data.to_dict()["size_categories"] == ["1K<n<10K"]
    assert dataset.data.to_dict()["source_datasets"] == ["wikitext"]



def test_a_body_with_its_own_rules_keeps_them_and_metadata_the_hub_rejects_is_refused():
    body = "# Card\n\n---\nfoo: bar\n---\ntext\n"  # horizontal rules in the markdown are not metadata
    assert ModelCard(hub_card({"license": "mit"}, body)).text.lstrip("\n") == body
    with pytest.raises(ValueError):
        hub_card({"model-index": [{"results": "not a list"}]}, body)
