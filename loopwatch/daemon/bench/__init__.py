"""``loopwatch bench``: the tutorial's experiments, measured on this machine."""
