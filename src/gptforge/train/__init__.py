"""Stage 3, train: the loop (loop.py, readable top to bottom) and what it is made of.

One optimizer step and one evaluation (step), the training state (state) and its way in and out of
checkpoints (snapshot, checkpoint), the loader (exact, resumable data order), optimizers and LR schedules,
processes and devices (dist, parallel, devices), the loss guard and stop signals, the console and the
reports, and the metrics.jsonl schema (events). Uses data and model; never analysis or interop.
"""
