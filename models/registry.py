"""The generator registry: one declaration per family, and the two modalities. Torch-free on purpose.

Params validation, stage routing, the registered model's requirements and serving read a generator's declaration
without importing it (importing the DDPM imports diffusers: seconds). The class itself receives its name and
capabilities from here (`Generator.__init_subclass__`), so each fact is written once.

Adding a family: its file in models/ (a `Generator` subclass with a `Config` dataclass), one `Declaration` line
below, and its params section class in config/params.py (checked against the Config dataclass by a test).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Modality:
    """What kind of data a generator makes, and everything that follows from it. There are two (TEXT, IMAGE),
    compared by identity (`params.model.modality is IMAGE`)."""

    name: str  # "text" | "image"
    sources_field: str  # the ingest params field listing this modality's sources
    promote_metrics: dict[str, bool]  # metrics the champion gate may compare -> whether larger is better
    default_metric: str  # register.promote_metric when params leave it null
    requirements: tuple[str, ...]  # pip packages every logged model of this modality needs
    serving_module: str  # the pyfunc the registered model is logged with (models-from-code)

    @property
    def registry_name(self) -> str:
        """The registered model's name when `register.model_name` is null."""
        return f"{self.name}-generator"

    def __str__(self) -> str:
        return self.name


TEXT = Modality("text", "sources", {"test_bpb": False, "test_perplexity": False, "bleu": True, "rouge_l": True},
                "test_bpb", ("torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas"),
                "serving.text_pyfunc")
IMAGE = Modality("image", "image_sources",
                 {"fid": False, "kid": False, "inception_score": True, "precision": True, "recall": True},
                 "fid", ("torch", "safetensors", "mlflow", "pandas", "numpy", "pillow"), "serving.image_pyfunc")
MODALITIES = {m.name: m for m in (TEXT, IMAGE)}


@dataclass(frozen=True)
class Declaration:
    """One generator family: what every part of the pipeline needs to know about it."""

    name: str  # the key everywhere: `model.name`, its params section `model.<name>`, metrics, the registry tag
    target: str  # "module:Class", imported only when this generator is chosen
    modality: Modality
    params: str  # its params section: the class of that name in config/params.py
    requirements: tuple[str, ...] = ()  # pip packages its logged model needs beyond the modality's
    conditional: bool = False  # samples are drawn for requested class labels
    reconstructs: bool = False  # has `reconstruct(x)`: evaluate shows reconstructions of real images
    stateful: bool = False  # carries state across training windows (truncated BPTT): contiguous stream batches
    select_best: bool = True  # keep the weights of the lowest validation loss (False: the last, for GANs)
    pretrained: bool = False  # accepts `model.init_from` (a checkpoint or Hugging Face model) and `model.lora`
    capabilities: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        flags = ("conditional", "reconstructs", "stateful", "select_best", "pretrained")
        object.__setattr__(self, "capabilities", tuple(f for f in flags if getattr(self, f)))


GENERATORS: dict[str, Declaration] = {d.name: d for d in (
    Declaration("gpt", "models.gpt:GPT", TEXT, "GPTParams", pretrained=True),
    Declaration("lstm", "models.rnn:LSTM", TEXT, "RNNParams", stateful=True),
    Declaration("gru", "models.rnn:GRU", TEXT, "RNNParams", stateful=True),
    Declaration("dcgan", "models.dcgan:DCGAN", IMAGE, "DCGANParams", select_best=False),
    Declaration("cdcgan", "models.dcgan:CDCGAN", IMAGE, "DCGANParams", select_best=False, conditional=True),
    Declaration("vae", "models.vae:VAE", IMAGE, "VAEParams", reconstructs=True),
    Declaration("ddpm", "models.ddpm:DDPM", IMAGE, "DDPMParams", requirements=("diffusers",)),
)}


def declaration(name: str) -> Declaration:
    """Return the declaration of generator `name`; KeyError naming the known ones otherwise."""
    if name not in GENERATORS:
        raise KeyError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name]


def declaration_of(target: str) -> Declaration | None:
    """Return the declaration whose class is `target` ("module:Class"), if any."""
    return next((d for d in GENERATORS.values() if d.target == target), None)
