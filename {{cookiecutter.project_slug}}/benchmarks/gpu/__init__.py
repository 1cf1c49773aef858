"""The parts of benchmarks/gpu_check.py, one measurement per module."""
