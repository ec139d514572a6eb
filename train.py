"""Train an mmgpt model: `accelerate launch train.py [--config FILE] [--resume latest | --overwrite] [key=value ...]`.

The loop lives in mmgpt/train.py (so `mmgpt train` works from any install); this file is the
entry point `accelerate launch` runs.
"""
from mmgpt.train import main

if __name__ == "__main__":
    main()
