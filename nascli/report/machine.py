"""What a measurement ran on, recorded next to every number nascli reports."""

from __future__ import annotations

import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: CPU model, torch threads, GPU if any, torch version."""
    gpu = f" · {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()} · {torch.get_num_threads()} threads{gpu} · torch {torch.__version__}"
