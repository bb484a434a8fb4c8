"""Pure parts of the retraining flows: the `flow` params section, dotted overrides, where shared state lives in a
DVC experiment copy, the lineage digest, sweep helpers and the run report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from config.params import apply_overrides, parse_params, state_root
from flows.experiments import best_version, exp_name, set_args, validate_sets
from flows.report import mlflow_links, report_markdown, sweep_markdown
from registry.lineage import lock_digest
from runtime.errors import ParamsError

ROOT = Path("/proj")


def error_of(data: dict) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(data, ROOT)
    return str(info.value)


# ------------------------------------------------------------------------------------------------- flow params


def test_flow_defaults_schedule_nightly_and_bound_every_stage_but_train():
    flow = parse_params({}, ROOT).flow
    assert flow.cron == "0 3 * * *" and flow.timezone == "UTC"
    assert flow.timeout("train") is None and flow.timeout("register") == 900
    assert flow.ingest_retries == 2


def test_a_partial_timeouts_mapping_keeps_the_defaults_of_the_other_stages():
    flow = parse_params({"flow": {"timeouts_s": {"train": 60}}}, ROOT).flow
    assert flow.timeout("train") == 60 and flow.timeout("ingest") == 3600


@pytest.mark.parametrize("data,expected", [
    ({"cron": "every night"}, "flow.cron: expected a 5-field cron expression such as '0 3 * * *'"),
    ({"cron": "0 3 * *"}, "flow.cron: expected a 5-field cron expression"),
    ({"timezone": "Mars/Olympus"}, "flow.timezone: unknown time zone"),
    ({"timeouts_s": {"trian": 5}}, "flow.timeouts_s.trian: 'trian' is not allowed; allowed values: 'preflight', 'ingest'"),
    ({"timeouts_s": {"train": 0}}, "flow.timeouts_s: time limits must be positive seconds or null (bad: train)"),
    ({"ingest_retries": -1}, "flow.ingest_retries: Input should be greater than or equal to 0"),
    ({"retries": 3}, "flow.retries: unknown key; allowed keys: cron, timezone, ingest_retries"),
])
def test_bad_flow_params_name_the_key(data, expected):
    assert expected in error_of({"flow": data})


def test_no_schedule_is_allowed():
    assert parse_params({"flow": {"cron": None}}, ROOT).flow.cron is None


def test_register_promote_accepts_gate_or_never_only():
    assert parse_params({}, ROOT).register.promote == "gate"
    assert "register.promote: 'sometimes' is not allowed; allowed values: 'gate' or 'never'" in \
        error_of({"register": {"promote": "sometimes"}})


# ------------------------------------------------------------------------------------------------- overrides


def test_dotted_overrides_set_nested_keys_without_touching_the_input():
    data = {"train": {"lr": 0.003, "max_steps": 600}}
    out = apply_overrides(data, {"train.lr": 0.001, "model.name": "gru", "model.gru.n_layer": 1})
    assert out == {"train": {"lr": 0.001, "max_steps": 600}, "model": {"name": "gru", "gru": {"n_layer": 1}}}
    assert data == {"train": {"lr": 0.003, "max_steps": 600}}


def test_a_misspelt_override_is_caught_by_the_schema_naming_the_key():
    data = apply_overrides({}, {"train.max_stepz": 5})
    assert "train.max_stepz: unknown key" in error_of(data)


@pytest.mark.parametrize("overrides,expected", [
    ({"train..lr": 1}, "override 'train..lr': expected a dotted key such as 'train.lr'"),
    ({"train.lr.x": 1}, "override 'train.lr.x': train.lr is not a section"),
])
def test_malformed_overrides_are_refused(overrides, expected):
    with pytest.raises(ParamsError, match="^" + expected.replace(".", r"\.").replace("(", r"\(")):
        apply_overrides({"train": {"lr": 0.1}}, overrides)


# ------------------------------------------------------------------------------------------------- shared state


def test_shared_state_stays_in_the_project_for_plain_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert state_root(tmp_path) == tmp_path.resolve()
    monkeypatch.delenv("DVC_ROOT")
    assert state_root(tmp_path) == tmp_path.resolve()


def test_a_dvc_experiment_copy_keeps_registry_and_checkpoints_in_the_main_project(monkeypatch, tmp_path):
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = parse_params({}, copy)
    main = tmp_path.resolve()
    assert params.register.tracking_uri == f"sqlite:///{main}/mlflow.db"
    assert params.register.artifacts_dir == main / "mlartifacts"
    assert params.train.checkpoint_dir == main / "checkpoints"
    assert params.train.out_dir == copy / "artifacts/train"  # versioned outputs stay in the experiment's copy


def test_dvc_root_pointing_elsewhere_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "other"))
    assert parse_params({}, tmp_path).train.checkpoint_dir == tmp_path / "checkpoints"


# ------------------------------------------------------------------------------------------------- lineage


LOCK = {"schema": "2.0", "stages": {name: {"cmd": f"python -m tasks.{name}", "outs": [{"md5": name}]}
                                    for name in ("ingest", "clean", "preprocess", "train", "evaluate", "register")}}


def test_lock_digest_changes_with_any_upstream_entry_but_not_with_register():
    base = lock_digest(LOCK)
    assert len(base) == 64
    changed = {"stages": {**LOCK["stages"], "train": {"cmd": "x", "outs": [{"md5": "other"}]}}}
    assert lock_digest(changed) != base
    no_register = {"stages": {k: v for k, v in LOCK["stages"].items() if k != "register"}}
    assert lock_digest(no_register) == base


def test_lock_digest_is_none_when_a_stage_never_completed():
    assert lock_digest(None) == "none"
    assert lock_digest({"stages": {"ingest": {}}}) == "none"


# ------------------------------------------------------------------------------------------------- sweeps


def test_set_args_write_values_dvc_parses_back():
    assert set_args({"model.name": "gru", "train.lr": 0.001, "model.lora": None, "ingest.sources": ["a b"],
                     "register.model_name": "my model"}) == [
        "-S", "++model.name=gru", "-S", "++train.lr=0.001", "-S", "++model.lora=null",
        "-S", '++ingest.sources=["a b"]', "-S", '++register.model_name="my model"']


def test_experiment_names_are_valid_git_ref_parts():
    assert exp_name("shiny lemur/2", 0) == "shiny-lemur-2-1"
    assert exp_name("x" * 100, 2).endswith("-3") and len(exp_name("x" * 100, 2)) <= 42


def test_best_version_follows_the_metric_direction_and_skips_failures():
    rows = [{"version": "4", "value": 2.0}, {"version": "5", "value": 1.5}, {"version": None, "value": None},
            {"version": "6", "value": math.nan}]
    assert best_version(rows, greater_is_better=False) == "5"
    assert best_version(rows, greater_is_better=True) == "4"
    assert best_version([{"version": None}], greater_is_better=False) is None


# ------------------------------------------------------------------------------------------------- reports


CHALLENGER = {"version": "7", "tags": {"metric.test_bpb": "1.70", "metric.bleu": "0.01", "decision": "promoted",
                                      "promote_metric": "test_bpb", "min_improvement": "0.0",
                                      "champion_version_before": "6", "champion_value_before": "1.80",
                                      "git_commit": "abc123", "dvc_lock_sha256": "f00", "data_sha256": "d474"}}


def test_report_puts_the_challenger_beside_the_champion_it_replaced():
    md = report_markdown("text-generator", ["train", "evaluate", "register"], CHALLENGER, CHALLENGER, ["Once"])
    assert "**Decision: promoted** (version 7; gate metric `test_bpb`" in md
    assert "| metric | challenger v7 | champion before (v6) |" in md
    assert "| test_bpb ◀ gate | 1.7 | 1.8 |" in md
    assert "- git_commit: `abc123`" in md and "- data_sha256: `d474`" in md
    assert "```text\nOnce\n```" in md


def test_report_shows_the_kept_champions_metrics_when_the_challenger_loses():
    lost = {"version": "8", "tags": {**CHALLENGER["tags"], "decision": "kept_champion", "metric.test_bpb": "1.9"}}
    md = report_markdown("m", ["register"], lost, {"version": "7", "tags": CHALLENGER["tags"]}, [])
    assert "**Decision: kept_champion**" in md
    assert "| test_bpb ◀ gate | 1.9 | 1.7 |" in md and "Samples" not in md


def test_report_shows_the_rescored_champion_with_the_interval_the_gate_decided_on():
    tags = {**CHALLENGER["tags"], "decision": "not_significant", "challenger_value": "1.7",
            "decision_rule": "register.min_confidence: the 0.95 interval of the gain [-0.01, 0.2] includes 0 (p=0.3)",
            "champion_rescored.test_bpb": "1.76", "champion_rescored.version": "6", "comparison.gain": "0.06",
            "comparison.ci_low": "-0.01", "comparison.ci_high": "0.2", "comparison.p_value": "0.3",
            "comparison.confidence": "0.95", "comparison.n_units": "40", "comparison.n_resamples": "1000"}
    md = report_markdown("m", ["register"], {"version": "8", "tags": tags}, {"version": "6", "tags": {}}, [])
    assert "Rule: register.min_confidence: the 0.95 interval of the gain [-0.01, 0.2] includes 0 (p=0.3)" in md
    assert "| test_bpb | challenger v8 | champion v6, re-scored | gain | 95% interval | p |" in md
    assert "| test_bpb | 1.7 | 1.76 | 0.06 | [-0.01, 0.2] | 0.3 |" in md
    assert "Paired over 40 units (1000 bootstrap resamples)" in md
    assert "re-scored" not in report_markdown("m", ["register"], CHALLENGER, CHALLENGER, [])  # no comparison


def test_report_says_which_guard_refused_a_challenger():
    why = "memorization 0.9 fails register.max_memorization (<= 0.5)"
    refused = {"version": "9", "tags": {**CHALLENGER["tags"], "decision": "refused_by_guard", "refused_by": why}}
    md = report_markdown("m", ["register"], refused, {"version": "7", "tags": CHALLENGER["tags"]}, [])
    assert "**Decision: refused_by_guard**" in md and f"Refused champion by guard: {why}" in md
    assert "Refused" not in report_markdown("m", ["register"], CHALLENGER, CHALLENGER, [])


def test_report_links_the_version_and_its_run_in_the_mlflow_ui():
    version = {**CHALLENGER, "run_id": "r1", "experiment_id": "4"}
    md = report_markdown("text-generator", ["register"], version, version, [], "http://mlflow.internal:5000/")
    assert ("MLflow: [model version](http://mlflow.internal:5000/#/models/text-generator/versions/7), "
            "[training run](http://mlflow.internal:5000/#/experiments/4/runs/r1)") in md
    (local,) = mlflow_links("sqlite:///mlruns.db", "m", {"version": "2"})  # no run known: the version only
    assert local == ("MLflow: run `mlflow ui --backend-store-uri sqlite:///mlruns.db`, then open "
                     "model version <http://127.0.0.1:5000/#/models/m/versions/2>")


def test_report_of_a_run_with_nothing_stale():
    md = report_markdown("m", [], None, {"version": "3", "tags": {}}, [])
    assert "none (DVC found every stage up to date)" in md and "Champion: version 3." in md


def test_sweep_report_marks_the_best_and_the_failures():
    rows = [{"name": "a-1", "overrides": {"train.lr": 0.001}, "version": "2", "value": 1.9, "status": "done"},
            {"name": "a-2", "overrides": {"train.lr": 0.01}, "version": "3", "value": 1.7, "status": "done"},
            {"name": "a-3", "overrides": {}, "status": "failed (exit 1)"}]
    comparison = {"challenger": 1.7, "champion": 1.75, "gain": 0.05, "ci_low": -0.01, "ci_high": 0.11,
                  "p_value": 0.2, "confidence": 0.95}
    md = sweep_markdown("m", "test_bpb", rows, "3", {"promoted": False, "champion_version": 1,
                                                      "decision": "not_significant", "comparison": comparison,
                                                      "decision_rule": "register.min_confidence: ..."})
    assert "| a-2 ★ | train.lr=0.01 | 3 | 1.7 | done |" in md
    assert "| a-3 | (none) | – | – | failed (exit 1) |" in md
    assert "**not_significant** (register.min_confidence: ...; champion is version 1)" in md
    assert ("test_bpb: challenger 1.7, champion re-scored 1.75, gain 0.05, 95% interval [-0.01, 0.11], p=0.2"
            in md)


def test_sweep_sets_are_validated_before_anything_runs(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.003\n")
    path = str(tmp_path / "params.yaml")
    assert [p.train.lr for p in validate_sets(path, [{"train.lr": 0.001}, {}])] == [0.001, 0.003]
    cases = {
        "param_sets: give at least one set of overrides": [],
        "param set 1: expected a mapping of dotted keys to values": [["train.lr", 1]],
        'param set 2 {"model.name": "rnn"}: params.yaml: model.name: \'rnn\' is not allowed': [{}, {"model.name": "rnn"}],
        "param set 1: register.promote_metric: the register and flow sections are shared": [
            {"register.promote_metric": "bleu"}],
    }
    for expected, sets in cases.items():
        with pytest.raises(ParamsError) as info:
            validate_sets(path, sets)
        assert str(info.value).startswith(expected), str(info.value)


def _sets(tmp_path, *overrides):
    from config.params import load_params

    (tmp_path / "params.yaml").write_text("model: {name: cdcgan, cdcgan: {train: {max_steps: 1500}}}\n")
    return [load_params(tmp_path / "params.yaml", o) for o in overrides]


def test_a_set_that_picks_another_modality_is_gated_under_its_own_registered_model(tmp_path):
    from flows.experiments import shared_register

    (text,) = _sets(tmp_path, {"model.name": "gru"})
    assert shared_register([text]).model_name == "text-generator"  # not params.yaml's image-generator
    assert shared_register([text]).promote_metric == "test_bpb"


def test_a_sweep_over_two_registered_models_is_refused_in_one_line(tmp_path):
    from flows.experiments import shared_register

    sets = _sets(tmp_path, {"model.name": "gru"}, {}, {"model.name": "vae"})
    with pytest.raises(ParamsError, match=r"register to different models \(text-generator gated on test_bpb "
                                          r"\(set 1\); image-generator gated on fid \(sets 2, 3\)\)"):
        shared_register(sets)


def test_an_explicit_train_override_goes_where_it_takes_effect(tmp_path):
    from flows.experiments import routed

    (image,) = _sets(tmp_path, {})
    assert routed({"train.max_steps": 100, "train.nproc": 2, "model.cdcgan.n_z": 8}, image) == {
        "model.cdcgan.train.max_steps": 100, "train.nproc": 2, "model.cdcgan.n_z": 8}
    (text,) = _sets(tmp_path, {"model.name": "gpt"})  # gpt has no loop settings of its own
    assert routed({"train.max_steps": 100}, text) == {"train.max_steps": 100}


# ------------------------------------------------------------------------------------------------- command lines


def _startup_timeout() -> int:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()


def test_a_flow_command_line_waits_longer_for_its_local_prefect_server_unless_the_user_chose(monkeypatch):
    from flows.errors import EPHEMERAL_STARTUP_S, run_cli

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert _startup_timeout() == 20  # Prefect's own default, too short on a loaded machine
    assert run_cli("pipeline", _startup_timeout) == EPHEMERAL_STARTUP_S
    assert _startup_timeout() == 20  # only for the command's call

    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 45}):
        assert run_cli("pipeline", _startup_timeout) == 45
