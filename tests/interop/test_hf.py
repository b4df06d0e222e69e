"""Loading local Hugging Face GPT-2 directories into the gpt2 arch."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptforge.errors import UserError
from gptforge.interop.hf import hf_state_from_gptforge, load_hf_gpt2

from helpers import tiny_hf

transformers = pytest.importorskip("transformers")


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def test_hf_gpt2_logits_match(tmp_path):
    hf, directory = tiny_hf(tmp_path)
    ours = load_hf_gpt2(str(directory)).eval()
    assert ours.cfg.arch == "gpt2" and ours.vocab_size == 100 and ours.padded_vocab_size == 128
    assert ours.cfg.block_size == 32 and ours.cfg.n_layer == 2 and ours.cfg.n_head == 4
    idx = torch.randint(0, 100, (3, 32), generator=torch.Generator().manual_seed(1))
    logits, _ = ours(idx)
    expected = hf_logits(hf, idx)
    diff = (logits[..., :100] - expected).abs().max().item()
    assert diff < 1e-5, diff
    # greedy continuations agree too (ours through the KV cache)
    prompt = idx[0, :5]
    with torch.no_grad():
        theirs = hf.generate(prompt[None], max_new_tokens=10, do_sample=False, pad_token_id=99)[0, 5:].tolist()
    assert list(ours.generate(prompt, 10, temperature=0)) == theirs


def test_pytorch_model_bin_and_unprefixed_names(tmp_path):
    """Older checkpoints: pytorch_model.bin, GPT2Model names without "transformer.", tied head stored."""
    hf, directory = tiny_hf(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    plain = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    plain["lm_head.weight"] = plain["wte.weight"]
    (directory / "model.safetensors").unlink()
    torch.save(plain, directory / "pytorch_model.bin")
    ours = load_hf_gpt2(str(directory)).eval()
    idx = torch.arange(20)[None]
    assert (ours(idx)[0][..., :100] - hf_logits(hf, idx)).abs().max() < 1e-5


def test_block_size_crop_and_dropout(tmp_path):
    hf, directory = tiny_hf(tmp_path)
    ours = load_hf_gpt2(str(directory), dropout=0.1, block_size=16).eval()
    assert ours.cfg.block_size == 16 and ours.transformer.wpe.weight.shape == (16, 32)
    assert ours.cfg.dropout == 0.1
    idx = torch.arange(16)[None]
    assert (ours(idx)[0][..., :100] - hf_logits(hf, idx)).abs().max() < 1e-5


def test_round_trip_of_the_mapping(tmp_path):
    _, directory = tiny_hf(tmp_path)
    ours = load_hf_gpt2(str(directory))
    back = hf_state_from_gptforge(ours.state_dict(), ours.cfg)
    original = load_file(str(directory / "model.safetensors"))
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_hf_gpt2(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        load_hf_gpt2(str(tmp_path))


def test_not_gpt2(tmp_path):
    _, directory = tiny_hf(tmp_path)
    doc = json.loads((directory / "config.json").read_text())
    doc["model_type"] = "llama"
    (directory / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="model_type is 'llama', not 'gpt2'"):
        load_hf_gpt2(str(directory))


@pytest.mark.parametrize("key,value", [("activation_function", "relu"), ("layer_norm_epsilon", 1e-6),
                                       ("scale_attn_by_inverse_layer_idx", True), ("n_inner", 100)])
def test_unsupported_gpt2_variants_are_refused(tmp_path, key, value):
    _, directory = tiny_hf(tmp_path)
    doc = json.loads((directory / "config.json").read_text())
    doc[key] = value
    (directory / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=key):
        load_hf_gpt2(str(directory))


def test_missing_and_misshapen_tensors(tmp_path):
    _, directory = tiny_hf(tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"missing tensors transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_hf_gpt2(str(directory))
    tensors["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(7)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias has shape \(7,\)"):
        load_hf_gpt2(str(directory))


def test_no_weights_and_corrupt_weights(tmp_path):
    _, directory = tiny_hf(tmp_path)
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read the safetensors"):
        load_hf_gpt2(str(directory))
    (directory / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_hf_gpt2(str(directory))


def test_pickle_with_code_is_refused(tmp_path):
    _, directory = tiny_hf(tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save({"x": Evil(tmp_path / "pwned")}, directory / "pytorch_model.bin")
    with pytest.raises(UserError, match="refused to unpickle"):
        load_hf_gpt2(str(directory))
    assert not (tmp_path / "pwned").exists()


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))
