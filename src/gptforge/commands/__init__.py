"""Commands that use several stages at once: sample, inspect, demo."""
