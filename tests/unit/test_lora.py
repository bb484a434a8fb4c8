"""LoRA on the GPT generator: only adapters train, merging keeps the function, bad targets are named."""

from __future__ import annotations

import pytest
import torch

from models.base import load_generator
from models.gpt import GPT, GPTConfig, LoraTargetError


def trained_lora_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=2048, block_size=32, n_layer=4, n_head=4, n_embd=128, dropout=0.0))
    model.with_lora(r=4, alpha=8.0, dropout=0.0, targets=["c_attn"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.randint(0, 2048, (2, 32))
    for _ in range(3):  # move the adapters away from their zero initialisation
        model.loss((x, x)).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_only_adapters_train_and_they_are_under_one_percent():
    model = trained_lora_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.n_params(trainable_only=True) < 0.01 * model.n_params()


def test_merged_and_unmerged_models_give_the_same_logits():
    model = trained_lora_model()
    merged = model.merged().eval()
    assert merged.config.lora_r == 0 and not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.randint(0, 2048, (3, 32))
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)
        assert not torch.allclose(model(x), GPT(merged.config).eval()(x), atol=1e-3)  # not just the base model


def test_generation_through_the_adapters_uses_the_cache_and_matches_merged():
    model = trained_lora_model()
    merged = model.merged().eval()
    prompt = torch.randint(0, 2048, (1, 5))
    assert torch.equal(model.generate(prompt, 40, temperature=0.0), merged.generate(prompt, 40, temperature=0.0))


def test_unmerged_save_and_load_round_trip(tmp_path):
    model = trained_lora_model()
    model.save(tmp_path)
    loaded = load_generator(tmp_path).eval()
    x = torch.randint(0, 2048, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.n_params(trainable_only=True) == model.n_params(trainable_only=True)


def test_unknown_target_modules_are_named_with_the_ones_that_exist():
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(LoraTargetError, match=r"\['q_proj'\] not found.*c_attn, c_fc, c_proj"):
        model.with_lora(r=4, alpha=8.0, dropout=0.0, targets=["q_proj"])
