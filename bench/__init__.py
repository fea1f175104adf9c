"""Benchmarks (not tests): the runner against a bare PyTorch loop, sweep efficiency, timing stability.

Run `python -m bench` (about 9 minutes on 2 CPU cores) or `python -m bench --quick` (about a minute).
"""
