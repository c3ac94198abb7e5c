"""twinloop core."""
