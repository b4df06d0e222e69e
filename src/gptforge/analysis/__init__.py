"""Stage 4, analysis: reading runs and datasets (files on disk) to say what a run is doing.

plan (before a run), diagnose (facts -> findings -> report), curves, plot, the GPU table, eval and bench.
It reads what the loop wrote; it never imports the loop.
"""
