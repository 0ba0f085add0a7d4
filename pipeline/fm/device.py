"""Where foundation models run: CUDA when present, else CPU with a bounded thread count."""

from __future__ import annotations

import os

import torch

MAX_CPU_THREADS = 4


def select_device(requested: str | None = None) -> torch.device:
    """`requested` (e.g. "cpu", "cuda:1") or MEDLOOP_FM_DEVICE, else CUDA if available."""
    requested = requested or os.environ.get("MEDLOOP_FM_DEVICE") or None
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_thread_count() -> int:
    """MEDLOOP_TORCH_THREADS, else min(4, CPU count): more threads than that mostly contend."""
    env = os.environ.get("MEDLOOP_TORCH_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(MAX_CPU_THREADS, os.cpu_count() or 1))


def configure_threads() -> int:
    """Cap torch's intra-op threads at `default_thread_count()`; never raise a lower setting
    (a test or a worker that chose 1 thread keeps it). Returns the count in effect."""
    cap = default_thread_count()
    if torch.get_num_threads() > cap or os.environ.get("MEDLOOP_TORCH_THREADS"):
        torch.set_num_threads(cap)
    return torch.get_num_threads()
