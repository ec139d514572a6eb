"""`python -m mmgpt.serve`: the same as `mmgpt serve`."""
import sys

from mmgpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
