"""Stage 3, train: the loop (loop.py, readable top to bottom) and what it is made of.

The training state, the loader (exact, resumable data order), optimizers and LR schedules, checkpoints,
processes and devices (dist, parallel, devices), the loss guard and stop signals, the console and the
metrics.jsonl events. Uses data and model; never analysis or interop.
"""
