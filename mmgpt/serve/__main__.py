"""`python -m mmgpt.serve`: the same as `mmgpt serve`."""
import sys

from mmgpt.serve.app import main

sys.exit(main())
