"""Benchmarks of mmgpt: training throughput and MFU, generation, data pipeline, a nanoVLM peer run.

Run one with `python -m bench.<name> --help` (or `python bench/<name>.py`); `bench/run_all.sh` runs
them all at CPU sizes and regenerates bench/RESULTS.md.
"""
