"""Loading Hugging Face models offline and quietly, without changing the caller's process.

The library never reaches for the network at run time: every load passes `local_files_only=True` instead of
setting `HF_HUB_OFFLINE` for the whole process, and progress bars are silenced only for the load itself.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_loading():
    """Hugging Face progress bars off for the block, then back as the caller had them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
