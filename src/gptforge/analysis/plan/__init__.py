"""`gptforge plan`: size a run before starting it (sizing.py computes, report.py writes it out)."""
