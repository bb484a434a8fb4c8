"""The schema of params.yaml: the only place the file is read and validated.

Every stage receives a typed, frozen `Params`; no other code opens params.yaml. Relative paths are resolved
against the directory holding params.yaml (the project root), so stages run the same from DVC, Prefect and tests.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from models.registry import GENERATORS, MODALITIES, Modality, declaration
from models.rules import unet_widths_problem
from runtime.errors import ParamsError

PARAMS_FILE = "params.yaml"


STAGES = ("preflight", "ingest", "clean", "preprocess", "classifier", "train", "evaluate", "register")  # dvc.yaml order

# Every generator `model.name` can choose, from the registry (models/registry.py, torch-free): its modality picks
# the sources ingest reads, the metrics evaluate computes and the registered model's default name.
GeneratorName = Literal[tuple(GENERATORS)]  # type: ignore[valid-type]


def _resolve(value: Path, info: ValidationInfo) -> Path:
    root = (info.context or {}).get("root")
    return value if value.is_absolute() or root is None else Path(root) / value


def _resolve_state(value: Path, info: ValidationInfo) -> Path:
    ctx = info.context or {}
    root = ctx.get("state_root", ctx.get("root"))
    return value if value.is_absolute() or root is None else Path(root) / value


# A path in params.yaml: written relative to the project root, held absolute once loaded.
ProjectPath = Annotated[Path, AfterValidator(_resolve)]
# State shared by every run of the project (registry, checkpoints): relative to the main project even when DVC runs
# an experiment in a temporary copy of it (see `state_root`).
StatePath = Annotated[Path, AfterValidator(_resolve_state)]


def state_root(root: Path) -> Path:
    """Return the directory that holds the project's shared state (MLflow store, artifacts, checkpoints).

    That is `root`, except in a DVC experiment run in a temporary copy (`dvc exp run --temp` or `--queue`, under
    `<project>/.dvc/tmp/exps/`): DVC then tells stages the main project in `DVC_ROOT`, and the shared state is
    there, so that models registered by experiments land in the project's registry instead of a deleted copy.
    """
    main = os.environ.get("DVC_ROOT")
    root = Path(root).resolve()
    if main and root.is_relative_to(Path(main).resolve() / ".dvc" / "tmp" / "exps"):
        return Path(main).resolve()
    return root


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PreflightParams(Section):
    """The first stage: every params key and the local inputs checked before any stage can delete its outputs."""

    # What preflight passed; its content never changes, so passing again never reruns ingest (which lists it as a
    # dependency only so that DVC runs preflight first).
    out_path: ProjectPath = Path("metrics/preflight.json")


class IngestParams(Section):
    # Text generators read `sources`: `embedded:pydoc` | a local file, directory or glob (.txt, .md, .jsonl) |
    # http(s):// URL | hf:<dataset>[:split]
    sources: list[str] = Field(default_factory=lambda: ["embedded:pydoc"], min_length=1)
    # Image generators read `image_sources`: `embedded:digits` | a folder of images (one subfolder per class for
    # labels) | an image file | a .npz/.npy array file | hf:<dataset>[:split] (online)
    image_sources: list[str] = Field(default_factory=lambda: ["embedded:digits"], min_length=1)
    image_field: str = "image"  # image column of Hugging Face datasets and .npz files
    label_field: str = "label"  # label column (optional)
    # DVC watches this directory, so edits to local raw data rerun ingest; sources elsewhere are read but not watched.
    inputs_dir: ProjectPath = Path("data/inputs")
    text_field: str = "text"  # field holding the text in .jsonl files and Hugging Face datasets
    # The terms each source is used under, keyed by the source exactly as listed above (an SPDX id such as
    # CC-BY-4.0, or free text). Recorded in the provenance manifest and the data card; embedded sources carry their
    # own; a source with none is recorded as "undeclared" and flagged in the data card.
    licenses: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0)  # per network request
    out_dir: ProjectPath = Path("data/raw")
    metrics_path: ProjectPath = Path("metrics/ingest.json")
    # per source file/URL/dataset: URI, licence, retrieval time, size, digest (the data card is built from it)
    provenance_path: ProjectPath = Path("data/provenance.json")

    @field_validator("licenses")
    @classmethod
    def _licensed_sources(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        listed = set(info.data.get("sources", [])) | set(info.data.get("image_sources", []))
        unknown = sorted(set(value) - listed)
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))} is not a listed source; keys must be sources or "
                             "image_sources exactly as written")
        return value


class CleanParams(Section):
    min_chars: int = Field(64, ge=1)  # text: shorter documents are dropped (after normalisation)
    max_chars: int = Field(1_000_000, ge=1)  # text: longer documents are dropped
    # images: colour mode every image is converted to; auto: RGB if any image has colour, else L (grayscale)
    image_mode: Literal["auto", "L", "RGB"] = "auto"
    min_image_size: int = Field(4, ge=1)  # images: smaller sides than this are dropped
    # text: personal data (e-mail, phone, IPv4/IPv6, Luhn-valid card numbers, URLs with credentials).
    # redact: replace each with a typed placeholder; drop: drop documents holding any; keep: count only.
    pii: Literal["redact", "drop", "keep"] = "redact"
    out_dir: ProjectPath = Path("data/clean")
    metrics_path: ProjectPath = Path("metrics/clean.json")

    @model_validator(mode="after")
    def _bounds(self) -> CleanParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


class PreprocessParams(Section):
    # bpe: byte-level BPE; char: one token per character seen in train (others map to a reserved unknown id).
    # Either is trained on the train split only, and independent of the generator chosen.
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(2048, ge=260, le=65535)  # bpe only; >= 256 bytes + specials, <= 65535 fits uint16
    # bpe only: train the tokenizer on at most this many MB (10^6 UTF-8 bytes) of train documents, a sample drawn by
    # content hash (reproducible, whatever the document order), so that training time stops growing with the corpus;
    # a smaller train split is used whole. null: the whole split, however large.
    tokenizer_train_mb: float | None = Field(16.0, gt=0)
    # images: side of the square the images are centre-cropped and resized to (a power of two for the generators)
    image_size: int = Field(16, ge=8, le=1024)
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_fraction: float = Field(0.05, gt=0, lt=0.5)
    out_dir: ProjectPath = Path("data/processed")
    metrics_path: ProjectPath = Path("metrics/preprocess.json")


_LOOP_FIELDS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
                "beta1", "beta2", "grad_clip", "eval_interval", "eval_batches", "log_interval", "seed")


class GeneratorSection(Section):
    """A generator's hyper-parameters, plus optional overrides of `train` loop settings for this generator only
    (a GAN wants lr 2e-4 and beta1 0.5 where a GPT wants 3e-3 and 0.9), so switching `model.name` alone trains
    each family with settings that suit it."""

    train: dict[str, Any] | None = None

    @field_validator("train")
    @classmethod
    def _loop_keys(cls, value: dict | None) -> dict | None:
        unknown = sorted(set(value or {}) - set(_LOOP_FIELDS))
        if unknown:
            raise ValueError(f"unknown train setting {', '.join(unknown)}; allowed keys: {', '.join(_LOOP_FIELDS)}")
        return value

    def architecture(self) -> dict[str, Any]:
        """Return the hyper-parameters that build the model (not the training overrides)."""
        return self.model_dump(exclude={"train"})


class GPTParams(GeneratorSection):
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    block_size: int = Field(128, ge=8)  # context length in tokens
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["gelu", "gelu_tanh"] = "gelu"  # the MLP's GELU: exact, or GPT-2's tanh approximation

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class RNNParams(GeneratorSection):
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=1)  # token embedding width
    n_hidden: int = Field(256, ge=1)  # recurrent state width
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # between layers and before the head
    block_size: int = Field(128, ge=2)  # truncated BPTT: gradients flow back this many tokens; state carries on


class LoraParams(Section):
    r: int = Field(8, ge=1)  # adapter rank
    alpha: float = Field(16.0, gt=0)  # scaling: updates are multiplied by alpha / r
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn"], min_length=1)  # GPT-2: c_attn, c_proj, c_fc


# Loop settings the image families train well with when params.yaml does not give their `train` overrides.
_IMAGE_TRAIN = {"batch_size": 64, "lr": 0.001, "weight_decay": 0.0, "beta2": 0.999, "warmup_steps": 20}
_GAN_TRAIN = {"batch_size": 64, "lr": 0.0002, "beta1": 0.5, "beta2": 0.999, "weight_decay": 0.0, "warmup_steps": 0,
              "grad_clip": 0.0}


class DCGANParams(GeneratorSection):
    train: dict[str, Any] | None = Field(default_factory=lambda: dict(_GAN_TRAIN))
    n_z: int = Field(64, ge=1)  # latent size
    ngf: int = Field(64, ge=1)  # generator width at its last layer
    ndf: int = Field(64, ge=1)  # discriminator width at its first layer
    embed_dim: int = Field(16, ge=1)  # cdcgan: label embedding width


class VAEParams(GeneratorSection):
    train: dict[str, Any] | None = Field(default_factory=lambda: dict(_IMAGE_TRAIN))
    latent_dim: int = Field(16, ge=1)
    base_channels: int = Field(32, ge=1)
    beta: float = Field(1.0, gt=0)  # weight of the KL term (1: the ELBO)


class DDPMParams(GeneratorSection):
    train: dict[str, Any] | None = Field(default_factory=lambda: dict(_IMAGE_TRAIN))
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1)  # UNet widths
    layers_per_block: int = Field(1, ge=1)
    attention: bool = True  # self-attention at the lowest resolution
    norm_num_groups: int = Field(8, ge=1)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"
    ema_decay: float = Field(0.999, gt=0, lt=1)  # samples come from the EMA weights
    sampler: Literal["ddpm", "ddim", "dpm_solver"] = "ddim"  # ddpm: full ancestral sampling, slow
    sample_steps: int = Field(50, ge=1)  # steps of the ddim / dpm_solver sampler

    @model_validator(mode="after")
    def _groups_divide(self) -> DDPMParams:
        if problem := unet_widths_problem(self.block_out_channels, self.norm_num_groups):
            raise ValueError(problem)
        return self


class _ModelSection(Section):
    # The generator; its hyper-parameters are in the section so named (one per registered generator, added below).
    name: GeneratorName = "gpt"
    # Start from a checkpoint instead of random weights (gpt only): models:/NAME@alias or models:/NAME/VERSION,
    # a local genpipe or Hugging Face model directory, or a hub id (online). Its tokenizer replaces preprocess's.
    init_from: str | None = None
    # Train low-rank adapters only (gpt only; usually with init_from); null trains every weight.
    lora: LoraParams | None = None

    @field_validator("init_from", "lora")
    @classmethod
    def _init_from_family(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if value is not None and name is not None and not declaration(name).pretrained:
            able = [d.name for d in GENERATORS.values() if d.pretrained]
            raise ValueError(f"supported for the {', '.join(able)} generator{'s' * (len(able) > 1)} only "
                             f"(model.name is {name!r})")
        return value

    @property
    def hparams(self) -> GeneratorSection:
        """Return the hyper-parameters of the chosen generator."""
        return getattr(self, self.name)

    @property
    def modality(self) -> Modality:
        """Return what the chosen generator generates (models.registry.TEXT or IMAGE)."""
        return declaration(self.name).modality


# `model`: the choice, plus one section per registered generator, of the params class its declaration names.
ModelParams = create_model("ModelParams", __base__=_ModelSection, **{
    name: (globals()[decl.params], Field(default_factory=dict)) for name, decl in GENERATORS.items()})


class TrainParams(Section):
    max_steps: int = Field(1000, ge=1)  # optimizer updates
    batch_size: int = Field(16, ge=1)  # sequences per micro-batch
    grad_accum: int = Field(1, ge=1)  # micro-batches per update
    lr: float = Field(3e-3, gt=0)  # peak learning rate
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)  # applied to matrices only, not to biases and norms
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # max global grad norm; 0 disables clipping
    eval_interval: int = Field(100, ge=1)  # validate and checkpoint every N steps
    eval_batches: int = Field(20, ge=1)  # validation micro-batches per evaluation
    log_interval: int = Field(10, ge=1)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: Literal["auto", True, False] = "auto"  # torch.compile the training step's modules; auto: on CUDA only
    # prepare each batch on a worker thread while the step before it runs (pinned memory, asynchronous copy);
    # auto: on CUDA only, where the copy to the device is what it hides (on CPU it measured no faster)
    prefetch: Literal["auto", True, False] = "auto"
    # processes of data-parallel training (DDP under torchrun: gloo on CPU, NCCL on CUDA); the global batch is
    # nproc x batch_size x grad_accum sequences per update
    nproc: int = Field(1, ge=1)
    out_dir: ProjectPath = Path("artifacts/train")
    checkpoint_dir: StatePath = Path("checkpoints")  # outside DVC's outputs so a killed run can resume
    metrics_path: ProjectPath = Path("metrics/train.json")
    plots_path: ProjectPath = Path("plots/train.json")  # one row per validation: step, train_loss, val_loss
    steps_plots_path: ProjectPath = Path("plots/train_steps.json")  # one row per log_interval: step, train_loss, lr

    @property
    def warmup(self) -> int:
        """The warmup the schedule uses: `warmup_steps`, or a tenth of the run when the run is not longer than
        its warmup (`dvc exp run -S train.max_steps=50` against the default 50 warmup steps), which the train
        stage reports."""
        return self.warmup_steps if self.warmup_steps < self.max_steps else self.max_steps // 10


class EvaluateParams(Section):
    batch_size: int = Field(16, ge=1)  # windows per forward pass when scoring the test split
    n_prompts: int = Field(32, ge=1)  # held-out prompts for BLEU / ROUGE-L
    prompt_tokens: int = Field(32, ge=1)
    continuation_tokens: int = Field(32, ge=1)
    n_samples: int = Field(8, ge=0)  # unconditional samples written to samples.jsonl
    sample_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0 means greedy
    top_k: int = Field(50, ge=0)  # 0 disables top-k filtering
    # images: FID, KID, IS, precision/recall compare this many generated images with as many real training images
    # (capped by half the training split, so that the real-vs-real floor uses two disjoint halves of that size)
    n_images: int = Field(1000, ge=10)
    kid_subset_size: int = Field(100, ge=2)
    pr_k: int = Field(3, ge=1)  # k of the k-NN balls of precision/recall
    grid_rows: int = Field(8, ge=1)  # sample grid: grid_rows x grid_rows images (conditional: a row per class)
    grid_scale: int = Field(4, ge=1)  # nearest-neighbour upscaling of the grid PNG
    sample_steps: int | None = Field(None, ge=1)  # ddpm: sampler steps for evaluation (null: the model's default)
    # text: a sample that repeats a verbatim span of at least this many characters of the training text counts as
    # memorized (the `memorization` metric is the share of such samples)
    memorization_chars: int = Field(64, ge=8)
    # images: a sample closer (in feature space) to its nearest training image than this quantile of the
    # train-to-train nearest-neighbour distances is a likely copy (`memorization` is the share of such samples)
    copy_quantile: float = Field(0.05, gt=0, lt=1)
    seed: int = 0
    out_dir: ProjectPath = Path("artifacts/evaluate")
    plots_dir: ProjectPath = Path("plots/evaluate")  # GRID_FILE and, for images, NEAREST_FILE, RECONSTRUCTIONS_FILE
    metrics_path: ProjectPath = Path("metrics/evaluate.json")


class ClassifierParams(Section):
    """The feature extractor of the image metrics: a small CNN trained on the real training images (labels, or
    rotations when the data has none). One per dataset, shared by every image generator, so their FID, KID and IS
    compare. Text data skips this stage."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.002, gt=0)
    width: int = Field(32, ge=4)  # channels of the first conv block
    feature_dim: int = Field(64, ge=2)  # the features FID/KID/precision/recall compare
    seed: int = 0
    out_dir: ProjectPath = Path("artifacts/classifier")
    metrics_path: ProjectPath = Path("metrics/classifier.json")


class RegisterParams(Section):
    # The registered model; null: text-generator or image-generator, by the chosen generator's modality.
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tracking_uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are relative to the project root
    experiment_name: str = "genpipe"
    artifacts_dir: StatePath = Path("mlartifacts")  # where a new experiment stores its artifacts
    # null: test_bpb (text) or fid (image). Text: test_bpb | test_perplexity | bleu | rouge_l;
    # image: fid | kid | inception_score | precision | recall
    promote_metric: Literal["test_bpb", "test_perplexity", "bleu", "rouge_l", "fid", "kid", "inception_score",
                            "precision", "recall"] | None = None
    min_improvement: float = Field(0.0, ge=0)  # absolute margin, in the metric's units, a challenger must win by
    # The champion is re-scored under the challenger's evaluation protocol (same test documents, prompts, real
    # images, feature extractor, seeds) and compared paired: the challenger must also win with this confidence
    # (the interval of its gain at this level excludes 0), else it stays challenger (`not_significant`).
    min_confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(1000, ge=100)  # paired bootstrap resamples of test documents, prompts or images
    # A champion that cannot be re-scored (another modality, image size or class set, or it does not load):
    # keep it (decision `incomparable: <reason>`), or promote the challenger anyway (`promoted_incomparable: ...`).
    on_incomparable: Literal["keep", "promote"] = "keep"
    rescore_cache_dir: StatePath = Path(".genpipe/rescores")  # champion re-scores per (version, protocol digest)
    lora_export: Literal["merged", "adapter"] = "merged"  # LoRA models: fold adapters into weights, or keep apart
    # gate: every new version becomes @challenger and takes @champion when it wins; never: register and tag only
    # (a sweep registers each experiment this way, then gates its best once).
    promote: Literal["gate", "never"] = "gate"
    # Guards a version must pass to become champion, whatever its promote_metric (evaluate's metrics):
    # memorization (share of samples copying training data) at most this, and diversity (text: distinct-2 of the
    # samples; images: spread of the samples' features relative to the real images') at least this.
    max_memorization: float = Field(0.5, ge=0, le=1)
    min_diversity: float = Field(0.3, ge=0)
    metrics_path: ProjectPath = Path("metrics/register.json")

    @model_validator(mode="after")
    def _absolute_sqlite(self, info: ValidationInfo) -> RegisterParams:
        prefix = "sqlite:///"
        ctx = info.context or {}
        root = ctx.get("state_root", ctx.get("root"))
        path = self.tracking_uri.removeprefix(prefix)
        if self.tracking_uri.startswith(prefix) and root is not None and not Path(path).is_absolute():
            object.__setattr__(self, "tracking_uri", prefix + str(Path(root) / path))
        return self

    @property
    def greater_is_better(self) -> bool:
        return {k: v for m in MODALITIES.values() for k, v in m.promote_metrics.items()}[self.promote_metric]


class FlowParams(Section):
    """How the Prefect flows run the stages: schedule, retries and time limits. Read by flows/ only, so changing
    it reruns no stage but preflight (which checks every key)."""

    cron: str | None = "0 3 * * *"  # the `retrain` deployment's schedule (cron, in `timezone`); null: no schedule
    timezone: str = "UTC"
    ingest_retries: int = Field(2, ge=0)  # retries of ingest when a network source is unreachable (not on 404)
    retry_delay_s: float = Field(10.0, ge=0)  # first retry delay; doubles on each further retry
    # Per-stage time limits in seconds (null: none). A stage over its limit fails the flow run; outputs are atomic.
    timeouts_s: dict[Literal[STAGES], float | None] = Field(default_factory=lambda: {  # type: ignore[valid-type]
        "preflight": 300, "ingest": 3600, "clean": 3600, "preprocess": 3600, "classifier": 3600, "train": None, "evaluate": 3600,
        "register": 900})

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            fields = value.split()
            if len(fields) != 5 or not all(re.fullmatch(r"[0-9*,/\-A-Za-z?]+", f) for f in fields):
                raise ValueError("expected a 5-field cron expression such as '0 3 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as 'UTC' or 'Europe/Paris'") from None
        return value

    @field_validator("timeouts_s")
    @classmethod
    def _positive(cls, value: dict) -> dict:
        bad = [k for k, v in value.items() if v is not None and v <= 0]
        if bad:
            raise ValueError(f"time limits must be positive seconds or null (bad: {', '.join(bad)})")
        return value

    def timeout(self, stage: str) -> float | None:
        return self.timeouts_s.get(stage, FlowParams.model_fields["timeouts_s"].default_factory()[stage])


with warnings.catch_warnings():
    # `register` is a public params key; shadowing ABCMeta.register on the model class is harmless.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(Section):
        preflight: PreflightParams = Field(default_factory=dict)
        ingest: IngestParams = Field(default_factory=dict)
        clean: CleanParams = Field(default_factory=dict)
        preprocess: PreprocessParams = Field(default_factory=dict)
        classifier: ClassifierParams = Field(default_factory=dict)
        model: ModelParams = Field(default_factory=dict)
        train: TrainParams = Field(default_factory=dict)
        evaluate: EvaluateParams = Field(default_factory=dict)
        register: RegisterParams = Field(default_factory=dict)
        flow: FlowParams = Field(default_factory=dict)
        root: Path = Field(default=Path("."), exclude=True)  # the project directory (set by the loader)
        _shadowed: dict[str, tuple[Any, Any]] = PrivateAttr(default_factory=dict)

        def shadowed_train(self) -> dict[str, tuple[Any, Any]]:
            """Loop settings given in the `train` section that the chosen generator's `model.<name>.train` replaces:
            {key: (the train section's value, the value used)}. The train stage reports each, so a
            `-S train.max_steps=100` that an image generator's own max_steps overrides is never silent."""
            return dict(self._shadowed)

        def train_key(self, key: str) -> str:
            """The params key a loop setting comes from: `model.<name>.train.<key>` or `train.<key>`."""
            return (f"model.{self.model.name}.train.{key}" if key in (self.model.hparams.train or {})
                    else f"train.{key}")

        @model_validator(mode="after")
        def _resolve_for_generator(self) -> Params:
            """Apply the chosen generator's `train` overrides; fill the registry defaults of its modality."""
            modality = self.model.modality
            overrides = self.model.hparams.train or {}
            given = {k: getattr(self.train, k) for k in self.train.model_fields_set}  # set in the train section
            self._shadowed = {k: (given[k], v) for k, v in overrides.items() if k in given and given[k] != v}
            if overrides:
                merged = {**self.train.model_dump(), **overrides}
                try:
                    object.__setattr__(self, "train", TrainParams.model_validate(merged))
                except ValidationError as exc:
                    err = exc.errors()[0]
                    key = ".".join([f"model.{self.model.name}.train", *(str(p) for p in err["loc"])])
                    raise ValueError(f"{key}: {err['msg'].removeprefix('Value error, ')}") from None
            reg = self.register
            if reg.model_name is None:
                object.__setattr__(reg, "model_name", modality.registry_name)
            if reg.promote_metric is None:
                object.__setattr__(reg, "promote_metric", modality.default_metric)
            elif reg.promote_metric not in modality.promote_metrics:
                raise ValueError(f"register.promote_metric: {reg.promote_metric!r} is not a metric of {modality} "
                                 f"generators ({self.model.name}); allowed values: "
                                 f"{', '.join(modality.promote_metrics)}")
            return self


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"] if p != "[key]")
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {value!r} is not allowed; allowed values: {allowed}"
    msg = msg.removeprefix("Value error, ")
    if not key:  # a check across sections names its keys itself
        return msg
    return f"{key}: {msg} (got {value!r})" if not isinstance(value, dict) else f"{key}: {msg}"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Return the keys allowed at `loc` (the location of an unknown key), for the error message."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [k for k, f in model.model_fields.items() if not f.exclude]


def parse_params(data: Any, root: Path, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping into typed objects; raise ParamsError naming every bad key in one line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    if "root" in data:  # set by the loader, never by the file
        raise ParamsError(f"{source}: root: unknown key; allowed keys: {', '.join(_allowed_keys(Params, ('root',)))}")
    try:
        return Params.model_validate({**data, "root": root}, context={"root": root, "state_root": state_root(root)})
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            text = _describe(err)
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(Params, err["loc"])
                text += f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            parts.append(text)
        raise ParamsError(f"{source}: " + "; ".join(parts)) from None


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Return params data with dotted-key overrides applied (`{"train.lr": 0.001}`, as `dvc exp run -S` takes them).

    New keys are added, so that validating the result names any misspelt key.
    """
    out = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(parts):
            raise ParamsError(f"override {dotted!r}: expected a dotted key such as 'train.lr'")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {dotted!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def read_params_data(path: Path | str = PARAMS_FILE) -> dict:
    """Read params.yaml as plain data (not validated); raise ParamsError on a missing file or malformed YAML."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path.name}: malformed YAML{where}: {problem}") from None
    if data is None:  # empty, or comments only: running on built-in defaults would overwrite the user's outputs
        raise ParamsError(f"{path.name} is empty: every stage reads its settings from it; restore it "
                          f"(git checkout {path.name}) or write at least one section")
    return data


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml (with optional dotted-key overrides); relative paths resolve against its
    directory."""
    path = Path(path).resolve()
    data = read_params_data(path)
    if overrides and (data is None or isinstance(data, dict)):
        data = apply_overrides(data or {}, overrides)
    return parse_params(data, path.parent, path.name)
