"""Benchmarks: scripts that print figures (``make bench``); never timed tests."""
