"""One contract for every registered generator: its declaration, its params section and its class agree.

Adding a family means a file in models/, one line in models/registry.py and a params section class; this test is
parametrised over the registry, so the new family is checked without editing any test."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

import config.params as params_module
from models.base import Generator, ImageGenerator, TextGenerator, generator_class, load_generator
from models.registry import GENERATORS, IMAGE, TEXT, declaration
from serving.signatures import requirements
from training.trainer import DATA_FIELDS

NAMES = list(GENERATORS)


def config_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_class_takes_its_name_and_capabilities_from_its_declaration(name):
    decl, cls = declaration(name), generator_class(name)
    assert issubclass(cls, TextGenerator if decl.modality is TEXT else ImageGenerator)
    assert (cls.name, cls.modality, cls.declaration) == (name, decl.modality.name, decl)
    assert (cls.stateful, cls.conditional, cls.select_best) == (decl.stateful, decl.conditional, decl.select_best)
    assert decl.reconstructs == hasattr(cls, "reconstruct")
    assert decl.pretrained == hasattr(cls, "from_hf")


@pytest.mark.parametrize("name", NAMES)
def test_the_params_section_has_the_config_dataclass_defaults(name):
    """The section params.yaml validates and the dataclass that builds the model hold one set of defaults."""
    section = getattr(params_module, declaration(name).params)
    defaults = config_defaults(generator_class(name))
    for key, field in section.model_fields.items():
        if key == "train":
            continue
        assert key in defaults, f"model.{name}.{key} builds nothing: {generator_class(name).__name__}.Config lacks it"
        value = field.get_default(call_default_factory=True)
        expected = defaults[key]
        assert (tuple(value) if isinstance(value, list) else value) == expected, f"model.{name}.{key}"


@pytest.mark.parametrize("name", NAMES)
def test_the_params_schema_offers_every_registered_generator(name):
    params = params_module.parse_params({"model": {"name": name}}, root=params_module.Path("."))
    assert params.model.modality is declaration(name).modality
    assert params.register.model_name == f"{declaration(name).modality.name}-generator"
    assert params.register.promote_metric == declaration(name).modality.default_metric
    section = params.model.hparams
    assert isinstance(section, getattr(params_module, declaration(name).params))


@pytest.mark.parametrize("name", NAMES)
def test_the_logged_model_requires_its_modality_and_generator_packages(name):
    decl = declaration(name)
    pins = [r.split("==")[0] for r in requirements(decl)]
    assert pins == [*decl.modality.requirements, *decl.requirements]
    assert all("==" in r for r in requirements(decl))


def test_init_from_is_refused_for_generators_that_do_not_declare_it():
    with pytest.raises(params_module.ParamsError, match="model.init_from: supported for the gpt generator only"):
        params_module.parse_params({"model": {"name": "lstm", "init_from": "gpt2"}}, root=params_module.Path("."))


def tiny(name: str) -> Generator:
    """A small instance of generator `name` with its default architecture, moved off its initial weights."""
    cls = generator_class(name)
    data = {"vocab_size": 50, "eot_id": 0, "image_size": 8, "channels": 1, "n_classes": 3}
    arch = {"gpt": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
            "lstm": {"n_layer": 1, "n_embd": 8, "n_hidden": 16}, "gru": {"n_layer": 1, "n_embd": 8, "n_hidden": 16},
            "ddpm": {"block_out_channels": (8, 16), "norm_num_groups": 4}}.get(name, {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    torch.manual_seed(0)
    model = cls(cls.Config(**{k: v for k, v in data.items() if k in fields and k in DATA_FIELDS}, **arch))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def draw(model: Generator, name: str, seed: int) -> torch.Tensor:
    kwargs = {"max_new_tokens": 4, "temperature": 1.0} if decl_is_text(name) else {"steps": 2} if name == "ddpm" else {}
    return model.sample(2, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_seeded_by_its_generator_and_leaves_the_global_rng_alone(name):
    model = tiny(name)
    rng = torch.get_rng_state()
    a, b, c = draw(model, name, 1), draw(model, name, 1), draw(model, name, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng)
    if decl_is_text(name):
        assert a.shape == (2, 4) and int(a.max()) < 50
    else:
        assert a.shape == (2, 1, 8, 8) and float(a.min()) >= -1 and float(a.max()) <= 1


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip_without_unpickling(name, tmp_path, monkeypatch):
    model = tiny(name)
    model.save(tmp_path / "gen")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("loading a generator must not unpickle"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("loading a generator must not unpickle"))
    loaded = load_generator(tmp_path / "gen").eval()
    assert type(loaded) is type(model) and loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(draw(model, name, 3), draw(loaded, name, 3))


def decl_is_text(name: str) -> bool:
    return declaration(name).modality is TEXT


def test_the_modalities_cover_the_registry():
    assert {d.modality for d in GENERATORS.values()} == {TEXT, IMAGE}
