"""`gptforge diagnose`: facts from a run's records, findings from the facts, a report of the findings."""
