"""twinloop.vlm_reward (built in later issues)."""
