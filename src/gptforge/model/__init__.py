"""Stage 2, model: the GPT (gpt2 and modern archs) and KV-cache sampling. Imports only config and errors."""
