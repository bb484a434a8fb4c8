"""params.yaml validation: what a user sees when the file is right, and the one-line message when it is not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from config.params import load_params, parse_params
from runtime.errors import ParamsError

REPO_ROOT = Path(__file__).resolve().parents[2]

SECTIONS = ["preflight", "ingest", "clean", "preprocess", "classifier", "model", "train", "evaluate", "register", "flow"]


def error_of(data, root: Path = Path("/proj")) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(data, root=root)
    message = str(info.value)
    assert "\n" not in message, f"error message must be one line: {message!r}"
    return message


def project_paths(params) -> dict[str, Path]:
    """Every path-valued setting, keyed `section.key`."""
    out = {}
    for section in SECTIONS:
        for key, value in getattr(params, section):
            if isinstance(value, Path):
                out[f"{section}.{key}"] = value
    return out


# ---------------------------------------------------------------------------------------------------- valid files


def test_repo_params_yaml_loads_with_paths_under_the_repo():
    params = load_params(REPO_ROOT / "params.yaml")

    assert params.root == REPO_ROOT
    assert params.model.name == "gpt"
    assert params.model.hparams is params.model.gpt
    assert params.preprocess.tokenizer == "bpe"
    paths = project_paths(params)
    assert "ingest.out_dir" in paths and "train.checkpoint_dir" in paths
    for key, path in paths.items():
        assert path.is_absolute() and path.is_relative_to(REPO_ROOT), key
    assert params.register.tracking_uri.startswith("sqlite:///")
    assert Path(params.register.tracking_uri.removeprefix("sqlite:///")).is_absolute()


def test_repo_params_yaml_is_what_dvc_writes_back_so_exp_run_changes_only_the_set_value():
    import io

    from dvc.utils.serialize._yaml import _dump, parse_yaml_for_update  # what `dvc exp run -S` uses to rewrite it

    text = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    data = parse_yaml_for_update(text, "params.yaml")
    out = io.StringIO()
    _dump(data, out)
    assert out.getvalue().splitlines() == text.splitlines()
    before, data["train"]["lr"] = data["train"]["lr"], 0.01  # as `-S train.lr=0.01` does
    out = io.StringIO()
    _dump(data, out)
    changed = [(a, b) for a, b in zip(text.splitlines(), out.getvalue().splitlines()) if a != b]
    assert changed == [(f"  lr: {before}", "  lr: 0.01")]


def test_dvc_reads_the_repo_params_yaml_as_every_yaml_reader_does():
    # `dvc repro` reads params with ruamel's C parser, which refuses plain scalars holding ':' in flow lists
    # (`[embedded:pydoc]`) that PyYAML and DVC's own round-trip writer accept: the sources are block lists.
    import yaml
    from dvc.utils.serialize import load_yaml

    assert load_yaml(REPO_ROOT / "params.yaml") == yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_an_empty_file_is_refused_but_an_empty_mapping_gives_schema_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing set\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"^params.yaml is empty: every stage reads its settings from it"):
        load_params(tmp_path / "params.yaml")  # running on defaults would overwrite the user's data/raw
    (tmp_path / "params.yaml").write_text("{}\n", encoding="utf-8")
    params = load_params(tmp_path / "params.yaml")
    assert params.ingest.sources == ["embedded:pydoc"]
    assert params.preprocess.vocab_size == 2048
    assert params.model.gpt.n_layer == 4
    assert params.register.promote_metric == "test_bpb"


def test_loaded_params_are_immutable(project):
    params = project.make_params()
    with pytest.raises(pydantic.ValidationError):
        params.train.max_steps = 10


# ---------------------------------------------------------------------------------------------------- bad keys and values


def test_unknown_key_names_the_key_and_lists_allowed_keys():
    message = error_of({"train": {"max_step": 5}})
    assert message.startswith("params.yaml: train.max_step: unknown key")
    allowed = message.split("allowed keys:")[1]
    assert "max_steps" in allowed and "batch_size" in allowed and "checkpoint_dir" in allowed


def test_unknown_section_lists_sections_but_not_internal_fields():
    message = error_of({"trian": {"max_steps": 5}})
    assert "trian: unknown key" in message
    allowed = [k.strip() for k in message.split("allowed keys:")[1].split(",")]
    assert allowed == SECTIONS  # `root` is set by the loader, not by users


def test_unknown_nested_key_lists_the_nested_section_keys():
    message = error_of({"model": {"gpt": {"n_layers": 2}}})
    assert "model.gpt.n_layers: unknown key" in message
    allowed = {k.strip() for k in message.split("allowed keys:")[1].split(",")}
    assert allowed == {"n_layer", "n_head", "n_embd", "block_size", "dropout", "activation", "train"}


def test_root_is_not_a_settable_key():
    """`root` is set by the loader; a `root:` in params.yaml is an unknown key, not silently ignored."""
    message = error_of({"root": "/elsewhere"})
    assert "root: unknown key" in message


def test_bad_literal_names_key_and_allowed_values():
    message = error_of({"model": {"name": "gan"}})
    assert "model.name" in message
    assert "'gan' is not allowed" in message
    assert "allowed values: 'gpt', 'lstm', 'gru', 'dcgan', 'cdcgan', 'vae' or 'ddpm'" in message


def test_each_generator_trains_with_its_own_loop_overrides():
    gan = parse_params({"model": {"name": "dcgan"}, "train": {"lr": 0.003, "max_steps": 60}}, Path("/proj"))
    assert (gan.train.lr, gan.train.beta1, gan.train.max_steps) == (0.0002, 0.5, 60)  # override wins, rest kept
    gpt = parse_params({"model": {"name": "gpt", "dcgan": {"train": {"lr": 1.0}}}, "train": {"lr": 0.003}},
                       Path("/proj"))
    assert gpt.train.lr == 0.003  # only the chosen generator's overrides apply
    assert "model.dcgan.train.lr: Input should be greater than 0" in error_of(
        {"model": {"name": "dcgan", "dcgan": {"train": {"lr": 0}}}})
    assert "model.vae.train: unknown train setting out_dir" in error_of(
        {"model": {"name": "vae", "vae": {"train": {"out_dir": "x"}}}})


def test_registry_defaults_follow_the_modality_and_metrics_must_fit_it():
    text = parse_params({}, Path("/proj")).register
    image = parse_params({"model": {"name": "ddpm"}}, Path("/proj")).register
    assert (text.model_name, text.promote_metric) == ("text-generator", "test_bpb")
    assert (image.model_name, image.promote_metric, image.greater_is_better) == ("image-generator", "fid", False)
    message = error_of({"model": {"name": "vae"}, "register": {"promote_metric": "bleu"}})
    assert message.startswith("params.yaml: register.promote_metric: 'bleu' is not a metric of image generators")
    assert "allowed values: fid, kid, inception_score, precision, recall" in message


def test_bad_device_lists_every_allowed_device():
    message = error_of({"train": {"device": "tpu"}})
    assert "train.device" in message and "'tpu'" in message
    for device in ("auto", "cpu", "cuda", "mps"):
        assert f"'{device}'" in message.split("allowed values:")[1]


@pytest.mark.parametrize(("data", "message"), [
    ({"train": {"compile": "fast"}}, "train.compile: 'fast' is not allowed; allowed values: 'auto', True or False"),
    ({"model": {"gpt": {"activation": "relu"}}},
     "model.gpt.activation: 'relu' is not allowed; allowed values: 'gelu' or 'gelu_tanh'"),
])
def test_a_value_outside_a_choice_lists_the_choices(data, message):
    assert message in error_of(data)


@pytest.mark.parametrize(
    ("data", "key", "got"),
    [
        ({"preprocess": {"vocab_size": 100}}, "preprocess.vocab_size", "100"),
        ({"preprocess": {"vocab_size": 70000}}, "preprocess.vocab_size", "70000"),
        ({"preprocess": {"val_fraction": 0.7}}, "preprocess.val_fraction", "0.7"),
        ({"preprocess": {"tokenizer_train_mb": 0}}, "preprocess.tokenizer_train_mb", "0"),
        ({"preprocess": {"tokenizer_train_mb": -16}}, "preprocess.tokenizer_train_mb", "-16"),
        ({"preprocess": {"tokenizer_train_mb": "lots"}}, "preprocess.tokenizer_train_mb", "'lots'"),
        ({"train": {"lr": -1}}, "train.lr", "-1"),
        ({"clean": {"min_chars": 0}}, "clean.min_chars", "0"),
        ({"ingest": {"timeout_s": 0}}, "ingest.timeout_s", "0"),
        ({"register": {"model_name": "bad name!"}}, "register.model_name", "'bad name!'"),
    ],
)
def test_out_of_range_value_names_the_key_and_the_value(data, key, got):
    message = error_of(data)
    assert f"{key}: " in message
    assert f"(got {got})" in message


def test_cross_field_rules_name_the_section():
    assert "clean: min_chars (100) must not exceed max_chars (10)" in error_of({"clean": {"min_chars": 100, "max_chars": 10}})
    assert "model.gpt: n_embd (30) must be divisible by n_head (4)" in error_of(
        {"model": {"gpt": {"n_embd": 30, "n_head": 4}}})


def test_a_run_not_longer_than_its_warmup_warms_up_over_a_tenth_of_it(tmp_path):
    short = parse_params({"train": {"max_steps": 50}}, tmp_path).train  # the default warmup is 50 steps
    assert (short.warmup_steps, short.warmup) == (50, 5)
    assert parse_params({"train": {"max_steps": 51}}, tmp_path).train.warmup == 50  # shorter than the run: as set


def test_loop_settings_a_generator_replaces_are_listed_with_the_value_used(tmp_path):
    data = {"model": {"name": "cdcgan", "cdcgan": {"train": {"max_steps": 1500, "lr": 0.0002}}},
            "train": {"max_steps": 100, "lr": 0.0002, "seed": 3}}
    params = parse_params(data, tmp_path)
    assert params.train.max_steps == 1500
    assert params.shadowed_train() == {"max_steps": (100, 1500)}  # same lr: nothing replaced; seed: not set there
    assert params.train_key("max_steps") == "model.cdcgan.train.max_steps" and params.train_key("seed") == "train.seed"


def test_every_bad_key_is_reported_in_one_line():
    message = error_of({"train": {"lr": 0, "batch_size": 0}, "ingest": {"nope": 1}})
    assert "train.lr" in message and "train.batch_size" in message and "ingest.nope: unknown key" in message


def test_top_level_must_be_a_mapping():
    assert "expected a mapping of sections at the top level, got list" in error_of(["ingest", "clean"])


def test_section_that_is_not_a_mapping_names_the_section():
    message = error_of({"train": 5})
    assert message.startswith("params.yaml: train: ")
    assert "(got 5)" in message


# ---------------------------------------------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("train:\n  max_steps: 5\n\tbatch_size: 4\n", "line 3, column 1"),
        ("train:\n  max_steps: 5\n batch_size: 4\n", "line 3, column 2"),
        ("ingest:\n  sources: [a\n  x: : 1\n", "line 3, column 4"),
    ],
)
def test_malformed_yaml_gives_line_and_column(tmp_path, text, where):
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_params(tmp_path / "params.yaml")
    message = str(info.value)
    assert message.startswith(f"params.yaml: malformed YAML at {where}: ")
    assert "\n" not in message


def test_missing_params_file_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_relative_paths_resolve_against_the_params_file_directory(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "params.yaml").write_text(
        "ingest:\n  out_dir: out/raw\n  metrics_path: /abs/metrics.json\ntrain:\n  checkpoint_dir: ../ckpt\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    params = load_params(root / "params.yaml")

    assert params.root == root
    assert params.ingest.out_dir == root / "out" / "raw"
    assert params.ingest.metrics_path == Path("/abs/metrics.json")  # absolute paths are kept
    assert params.train.checkpoint_dir == root / ".." / "ckpt"


def test_relative_params_file_path_resolves_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("clean:\n  out_dir: cleaned\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    params = load_params("params.yaml")
    assert params.root == tmp_path
    assert params.clean.out_dir == tmp_path / "cleaned"


def test_omitted_paths_also_resolve_against_the_params_file_directory(tmp_path):
    """Defaults are relative to the project root too: a key or section left out must not land in the cwd."""
    (tmp_path / "params.yaml").write_text("ingest:\n  sources: [data/inputs]\n", encoding="utf-8")
    params = load_params(tmp_path / "params.yaml")

    assert params.ingest.out_dir == tmp_path / "data" / "raw"  # key omitted in a present section
    assert params.clean.out_dir == tmp_path / "data" / "clean"  # whole section omitted
    assert params.train.checkpoint_dir == tmp_path / "checkpoints"
    assert params.register.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:///{root}/mlflow.db"),
        ("sqlite:///runs/track.db", "sqlite:///{root}/runs/track.db"),
        ("sqlite:////abs/track.db", "sqlite:////abs/track.db"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("file:///abs/mlruns", "file:///abs/mlruns"),
    ],
)
def test_sqlite_tracking_uri_is_made_absolute(tmp_path, uri, expected):
    params = parse_params({"register": {"tracking_uri": uri}}, root=tmp_path)
    assert params.register.tracking_uri == expected.format(root=tmp_path)


# ---------------------------------------------------------------------------------------------------- the process


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("GENPIPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_bad_params_file_exits_2_with_one_error_line(tmp_path):
    (tmp_path / "params.yaml").write_text("ingest:\n  sources: [embedded:pydoc]\n  bogus: 1\n", encoding="utf-8")

    proc = run_stage("tasks.ingest", tmp_path)

    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ingest: params.yaml: ingest.bogus: unknown key; allowed keys: sources")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_malformed_params_file_exits_2_with_one_error_line(tmp_path):
    (tmp_path / "params.yaml").write_text("clean:\n  min_chars: [1\n", encoding="utf-8")

    proc = run_stage("tasks.clean", tmp_path)

    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: clean: params.yaml: malformed YAML at line ")


def test_data_error_exits_1_with_one_error_line(tmp_path):
    (tmp_path / "params.yaml").write_text("ingest:\n  sources: [missing/corpus.txt]\n", encoding="utf-8")

    proc = run_stage("tasks.ingest", tmp_path)

    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == "error: ingest: source 'missing/corpus.txt': no such file or directory"
