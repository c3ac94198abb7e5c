"""twinloop.datasets (built in later issues)."""
