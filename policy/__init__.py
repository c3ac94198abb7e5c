"""twinloop.policy (built in later issues)."""
