"""Training limits: the memory estimate and the projected duration that make impossible settings fail fast."""

from __future__ import annotations

import pytest

from runtime.errors import ParamsError
from training.limits import available_bytes, check_memory, gpt_train_bytes, rnn_train_bytes

GPT = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128}


def test_the_default_gpt_needs_well_under_a_gigabyte_and_the_estimate_grows_with_its_inputs():
    base = gpt_train_bytes(4, 4, 128, 128, 2048, 16)
    assert 50e6 < base < 1e9  # the default run's train stage peaks at ~850 MB RSS, torch itself included
    assert gpt_train_bytes(4, 4, 128, 256, 2048, 16) > 3 * base / 2  # attention grows with the square of T
    assert gpt_train_bytes(4, 4, 128, 128, 2048, 32) > base
    assert gpt_train_bytes(8, 4, 128, 128, 2048, 16) > base


def test_a_context_of_100k_tokens_needs_terabytes_and_is_refused_naming_the_keys():
    with pytest.raises(ParamsError) as err:
        check_memory("gpt", {**GPT, "block_size": 100_000}, 2048, 16, available=24 * 2**30)
    message = str(err.value)
    assert message.startswith("model.gpt.block_size=100000 with train.batch_size=16 needs about ")
    assert "TiB" in message and "24.0 GiB available" in message


def test_a_fitting_model_passes_and_families_without_an_estimate_are_not_checked():
    assert check_memory("gpt", GPT, 2048, 16, available=24 * 2**30) == gpt_train_bytes(4, 4, 128, 128, 2048, 16)
    assert check_memory("gpt", {**GPT, "block_size": 100_000}, 2048, 16, available=None) > 2**40  # unknown: no check
    assert check_memory("vae", {}, 0, 16, available=1) is None
    rnn = {"n_layer": 2, "n_embd": 128, "n_hidden": 256, "block_size": 128}
    assert check_memory("lstm", rnn, 2048, 16, available=24 * 2**30) == rnn_train_bytes(2, 128, 256, 128, 2048, 16)


def test_this_machine_reports_its_free_memory():
    free = available_bytes("cpu")
    assert free is not None and free > 2**20
