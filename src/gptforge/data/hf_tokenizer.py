"""A gptforge tokenizer as Hugging Face tokenizer files, so `AutoTokenizer.from_pretrained(DIR)` gives the same ids.

GPT-2's: its vocab.json and merges.txt (byte-identical to the `gpt2` repo's). A trained BPE: the tokenizer.json
HF tokenizers wrote when it was trained. Characters: a tokenizer.json whose vocabulary is the characters (a BPE
with no merges splits text into them) and whose decoder joins them back. The end-of-text token is the BOS and
EOS: gptforge puts it before every document.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gptforge.data.tokenizers import EOT, Tokenizer, gpt2_files
from gptforge.fsutil import atomic_write_json


def _char_tokenizer_json(chars: list[str]) -> str:
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    hf.decoder = decoders.Fuse()  # characters join without spaces
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])  # id len(chars), as CharTokenizer
    return hf.to_str()


def write_hf_tokenizer(tok: Tokenizer, directory: str | Path, model_max_length: int | None = None) -> str:
    """Write `tok` into `directory` in Hugging Face's format; return what was written, in words."""
    directory = Path(directory)
    specials = [t for t in getattr(tok, "special_tokens", []) if t != EOT]
    config = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"]}  # no token_type_ids: a GPT has no segments
    if specials:
        config["additional_special_tokens"] = specials
    if model_max_length:
        config["model_max_length"] = model_max_length
    if tok.kind == "gpt2":
        encoder, merges = gpt2_files()
        shutil.copyfile(encoder, directory / "vocab.json")
        shutil.copyfile(merges, directory / "merges.txt")
        config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False)
        note = "GPT-2 tokenizer (vocab.json, merges.txt)"
    elif tok.kind == "bpe":
        source = tok.source_dir / "tokenizer.json"
        if source.resolve() != (directory / "tokenizer.json").resolve():
            shutil.copyfile(source, directory / "tokenizer.json")
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        note = f"trained BPE tokenizer (tokenizer.json, {tok.vocab_size:,} tokens)"
    elif tok.kind == "char":
        (directory / "tokenizer.json").write_text(_char_tokenizer_json(tok.chars), encoding="utf-8")
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        note = f"character tokenizer (tokenizer.json, {len(tok.chars)} characters + end-of-text)"
    else:
        raise ValueError(f"no Hugging Face form for a {tok.kind!r} tokenizer")
    atomic_write_json(directory / "tokenizer_config.json", config)
    special_map = {k: v for k, v in config.items() if k.endswith("_token") or k == "additional_special_tokens"}
    atomic_write_json(directory / "special_tokens_map.json", special_map)
    return note
