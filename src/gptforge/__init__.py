"""gptforge: raw text to a trained GPT, with exact resume and a diagnosis of the run."""

__version__ = "0.1.0"
