"""Stage 5, interop: to and from other tools (Hugging Face transformers, nanoGPT checkpoints)."""
