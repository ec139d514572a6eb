"""Training: the loop (loop.py), optimizer and freezing (optim.py), checkpoints and resuming (checkpoint.py),
its config (config.py)."""
