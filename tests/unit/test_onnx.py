"""ONNX export of every generator family (serving/exports.py), checked with onnxruntime: the graphs compute what the
product computes at shapes other than the traced one, a consumer's loops (text generation, the DDPM's numpy DDIM
sampler) reproduce the product's, the manifest tells the truth, and a parity above the tolerance is refused."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from models.base import generator_class, load_generator
from models.registry import GENERATORS
from serving.exports import ONNX_MANIFEST, ParityError, main, onnx_export
from serving.onnx_sampling import DDIM_TOLERANCE, ddim_sample

# Tiny configs, one per family: a new family needs one here (test_every_family_has_a_tiny_config).
TINY = {
    "gpt": {"vocab_size": 97, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0},
    "lstm": {"vocab_size": 97, "n_layer": 2, "n_embd": 8, "n_hidden": 16, "dropout": 0.0},
    "gru": {"vocab_size": 97, "n_layer": 2, "n_embd": 8, "n_hidden": 16, "dropout": 0.0},
    "dcgan": {"image_size": 8, "n_z": 8, "ngf": 8, "ndf": 8},
    "cdcgan": {"image_size": 8, "channels": 3, "n_classes": 3, "n_z": 8, "ngf": 8, "ndf": 8, "embed_dim": 4},
    "vae": {"image_size": 8, "latent_dim": 4, "base_channels": 8},
    "ddpm": {"image_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "num_train_timesteps": 50,
             "sample_steps": 5},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is faster than two that wait on each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str):
    """Return the tiny model of family `name` with its weights and BatchNorm statistics moved off their initial
    values (seeded), so parity is tested on outputs that are not near zero and eval-mode normalisation matters."""
    torch.manual_seed(0)
    cls = generator_class(name)
    model = cls(cls.Config(**TINY[name]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        if name == "ddpm":
            model.ema.load_state_dict(model.unet.state_dict())  # sampling reads the averaged weights
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(name)` -> (model, export folder): each family exported once for the module's tests."""
    cache = {}

    def get(name: str):
        if name not in cache:
            model = tiny(name)
            cache[name] = model, tmp_path_factory.mktemp(f"onnx-{name}") / "onnx"
            onnx_export(model, cache[name][1])
        return cache[name]

    return get


def session(folder, graph: str) -> onnxruntime.InferenceSession:
    manifest = json.loads((folder / ONNX_MANIFEST).read_text())
    return onnxruntime.InferenceSession(str(folder / manifest["graphs"][graph]["file"]),
                                        providers=["CPUExecutionProvider"])


def fresh_inputs(name: str, model, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Inputs of the family's graph at sizes other than the traced ones (which are 2 and 16 or 5)."""
    g, cfg = torch.Generator().manual_seed(7), model.config
    if name == "gpt":
        return {"input_ids": torch.randint(cfg.vocab_size, (batch, seq), generator=g)}
    if name in ("lstm", "gru"):
        names = ("h", "c") if name == "lstm" else ("h",)
        state = {n: torch.randn(cfg.n_layer, batch, cfg.n_hidden, generator=g) for n in names}
        return {"tokens": torch.randint(cfg.vocab_size, (batch, seq), generator=g)} | state
    if name == "ddpm":
        return {"x_t": torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g),
                "t": torch.randint(cfg.num_train_timesteps, (batch,), generator=g)}
    z = {"z": torch.randn(batch, cfg.n_z if name != "vae" else cfg.latent_dim, generator=g)}
    return z | ({"labels": torch.randint(cfg.n_classes, (batch,), generator=g)} if name == "cdcgan" else {})


def product(name: str, model, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """What the product computes for those inputs, through the model's own methods."""
    if name == "gpt":
        return [model(x["input_ids"])]
    if name == "lstm":
        logits, (h, c) = model(x["tokens"], (x["h"], x["c"]))
        return [logits, h, c]
    if name == "gru":
        return list(model(x["tokens"], x["h"]))
    if name == "ddpm":
        return [model.ema(x["x_t"], x["t"]).sample]
    if name == "vae":
        return [model.decode(x["z"])]
    return [model.G(x["z"], x.get("labels"))]


def test_every_family_has_a_tiny_config():
    assert set(TINY) == set(GENERATORS)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_every_family_exports_graphs_that_match_pytorch_at_new_sizes(exported, name):
    model, folder = exported(name)
    (graph,) = json.loads((folder / ONNX_MANIFEST).read_text())["graphs"]
    for batch, seq in ((1, 1), (4, 7)):  # other than traced (2 rows of 16 or 5 tokens); one row, one token
        x = fresh_inputs(name, model, batch, seq)
        got = session(folder, graph).run(None, {k: v.numpy() for k, v in x.items()})
        with torch.no_grad():
            want = product(name, model, x)
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_the_manifest_reads_back_with_the_truth_about_each_graph(exported, name):
    model, folder = exported(name)
    manifest = json.loads((folder / ONNX_MANIFEST).read_text())
    assert manifest["family"] == name and manifest["modality"] == model.modality and manifest["opset"] >= 18
    assert sorted(manifest["files"]) == sorted(p.name for p in folder.iterdir())
    assert set(manifest["graphs"]) == set(model.onnx_graphs())
    for graph, entry in manifest["graphs"].items():
        sess = session(folder, graph)
        assert [(i["name"], i["shape"]) for i in entry["inputs"]] == [(i.name, i.shape) for i in sess.get_inputs()]
        assert [(o["name"], o["shape"]) for o in entry["outputs"]] == [(o.name, o.shape) for o in sess.get_outputs()]
        assert {i["dtype"] for i in entry["inputs"] + entry["outputs"]} <= {"float32", "int64"}
        assert "batch" in entry["inputs"][0]["shape"] and "batch" in entry["outputs"][0]["shape"]
        assert 0 <= entry["parity"]["max_abs_diff"] <= entry["parity"]["tolerance"] <= 1e-3
        assert len(entry["parity"]["inputs"]) >= 3  # the traced sizes and two others
    if model.modality == "text":
        assert manifest["usage"]["vocab_size"] == model.config.vocab_size
        assert "seq" in manifest["graphs"][graph]["outputs"][0]["shape"]  # not the traced length
    else:
        c, s = model.config.channels, model.config.image_size
        assert manifest["usage"]["image_shape"] == [c, s, s]


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
def test_a_consumer_loop_on_the_text_graph_continues_a_prompt_as_generate_does(exported, name):
    model, folder = exported(name)
    (graph,) = json.loads((folder / ONNX_MANIFEST).read_text())["graphs"]
    sess, prompt = session(folder, graph), np.array([[5, 17, 3]], dtype=np.int64)
    tokens = prompt
    if name == "gpt":  # the whole context at every step (no KV cache)
        for _ in range(6):
            logits = sess.run(["logits"], {"input_ids": tokens})[0]
            tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
    else:  # the prompt once, then one token at a time with the state
        state = {n: np.zeros((model.config.n_layer, 1, model.config.n_hidden), np.float32)
                 for n in [i.name for i in sess.get_inputs()][1:]}
        step = tokens
        for _ in range(6):
            logits, *out = sess.run(None, {"tokens": step} | state)
            state = dict(zip(state, out))
            step = logits[:, -1].argmax(-1)[:, None]
            tokens = np.concatenate([tokens, step], axis=1)
    want = model.generate(torch.from_numpy(prompt), 6, temperature=0.0)
    assert tokens[:, 3:].tolist() == want.tolist()


@pytest.mark.parametrize("name", ["dcgan", "cdcgan", "vae"])
def test_the_image_graph_turns_the_latents_sample_draws_into_its_images(exported, name):
    model, folder = exported(name)
    (graph,) = json.loads((folder / ONNX_MANIFEST).read_text())["graphs"]
    n_z = model.config.latent_dim if name == "vae" else model.config.n_z
    z = torch.randn(5, n_z, generator=torch.Generator().manual_seed(3))  # as sample draws them from the seed
    labels = torch.tensor([0, 2, 1, 1, 0])
    feeds = {"z": z.numpy()} | ({"labels": labels.numpy()} if name == "cdcgan" else {})
    got = session(folder, graph).run(None, feeds)[0]
    want = model.sample(5, generator=torch.Generator().manual_seed(3), labels=labels).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert got.min() >= -1 and got.max() <= 1


def test_the_numpy_ddim_loop_on_the_onnx_unet_reproduces_the_products_ddim_sampler(exported):
    model, folder = exported("ddpm")
    cfg = model.config
    noise = torch.randn((4, cfg.channels, cfg.image_size, cfg.image_size), generator=torch.Generator().manual_seed(5))
    for steps in (None, 3):  # the model's sample_steps (5), and a count that does not divide T = 50
        want = model.sample(4, generator=torch.Generator().manual_seed(5), sampler="ddim", steps=steps).numpy()
        got = ddim_sample(folder, noise.numpy(), steps=steps)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=DDIM_TOLERANCE)
        assert np.abs(want).mean() > 0.1  # images, not a near-zero output that anything would match


class TorchUNet:
    """The product's averaged UNet behind onnxruntime's `run`: isolates the loop's maths from the graph's."""

    def __init__(self, model) -> None:
        self.model = model

    def run(self, names, feeds):
        with torch.no_grad():
            return [self.model.ema(torch.from_numpy(feeds["x_t"]), torch.from_numpy(feeds["t"])).sample.numpy()]


def test_the_numpy_ddim_step_is_the_products_bit_for_bit(exported):
    model, folder = exported("ddpm")
    cfg = model.config
    noise = torch.randn((2, cfg.channels, cfg.image_size, cfg.image_size), generator=torch.Generator().manual_seed(6))
    want = model.sample(2, generator=torch.Generator().manual_seed(6), sampler="ddim").numpy()
    np.testing.assert_array_equal(ddim_sample(folder, noise.numpy(), session=TorchUNet(model)), want)


def test_a_lora_gpt_is_exported_with_its_adapters_merged(tmp_path):
    model = tiny("gpt").with_lora(2, 4.0, 0.0, ["c_attn"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B starts at zero: the adapters would change nothing
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    onnx_export(model, tmp_path / "onnx")
    ids = torch.randint(97, (3, 9), generator=torch.Generator().manual_seed(4))
    got = session(tmp_path / "onnx", "logits").run(None, {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(ids)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


def test_a_parity_above_the_tolerance_is_a_one_line_error_and_keeps_the_previous_export(tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "previous").write_text("kept")
    with pytest.raises(ParityError) as err:
        onnx_export(tiny("gpt"), out, tolerance=1e-12)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("ONNX export of gpt graph 'logits': ONNX Runtime differs from PyTorch by ")
    assert message.endswith("above the tolerance 1e-12")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no scratch folder left beside it
    assert sorted(p.name for p in out.iterdir()) == ["previous"]


def test_the_cli_exports_a_saved_generator_folder_as_onnx_by_default_for_image_families(tmp_path, capsys):
    model = tiny("vae")
    model.save(tmp_path / "train")
    main(["--generator", str(tmp_path / "train"), "--out", str(tmp_path / "onnx")])  # onnx: its only format
    manifest = json.loads((tmp_path / "onnx" / ONNX_MANIFEST).read_text())
    assert manifest["family"] == "vae" and manifest["config"] == json.loads(
        (tmp_path / "train" / "generator.json").read_text())["config"]
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    got = session(tmp_path / "onnx", "decoder").run(None, {"z": z})[0]
    with torch.no_grad():
        want = load_generator(tmp_path / "train").decode(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    with pytest.raises(SystemExit) as exit_:
        main(["--generator", str(tmp_path / "train"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert exit_.value.code == 2 and "only GPT does" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
