"""Standalone PyTorch modules: building blocks, the network builder and exports."""
