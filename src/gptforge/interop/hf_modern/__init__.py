"""The configuration and modeling code an exported modern-arch model ships with (loaded by transformers with
trust_remote_code=True). They import torch and transformers only: the exported folder stands on its own."""
