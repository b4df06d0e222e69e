"""Configuration of gptforge's modern GPT in transformers (shipped in the exported model folder)."""

from transformers import PretrainedConfig


class GptforgeConfig(PretrainedConfig):
    model_type = "gptforge"
    # the names transformers and its users (lm-eval, vLLM, ...) look for
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd",
                     "max_position_embeddings": "block_size"}

    def __init__(self, vocab_size=50257, padded_vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024,
                 logit_softcap=15.0, rope_base=10000.0, **kwargs):
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size  # rows of the embedding and head (a multiple of 64)
        self.n_layer, self.n_head, self.n_embd, self.block_size = n_layer, n_head, n_embd, block_size
        self.logit_softcap = logit_softcap  # 0: off
        self.rope_base = rope_base
        self.use_cache = kwargs.pop("use_cache", True)  # (not a PretrainedConfig default in every version)
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)
