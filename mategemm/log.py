"""The `mategemm` logger (Python logging). Cache warnings and compile failures go through it at
WARNING/ERROR, each NVRTC compile at INFO. The knobs that ask for output (MATEGEMM_PRINT_CONFIGS,
MATEGEMM_JIT_DEBUG) get it on stderr even when the application configured no logging."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("mategemm")
_stderr: logging.Handler | None = None


def verbose() -> logging.Logger:
    """The logger, made to show DEBUG and up on stderr once, unless the application has set up
    handlers of its own (then its configuration decides)."""
    global _stderr
    if _stderr is None and not log.handlers and not logging.getLogger().handlers:
        _stderr = logging.StreamHandler(sys.stderr)
        _stderr.setFormatter(logging.Formatter("[mategemm] %(message)s"))
        log.addHandler(_stderr)
        log.setLevel(logging.DEBUG)
    return log
