"""Commands that use several stages at once: train (with HF weights), sample, inspect, demo, and the dispatch of
configs (TOML or nanoGPT .py) and of runs (RUN_DIR or a nanoGPT log) for diagnose and plot."""
