"""Numerical operators, each a PyTorch implementation with a readable reference twin.

``scan``: Mamba's selective scan (linear time and memory; mamba-ssm's CUDA kernel on GPUs when installed).
"""
