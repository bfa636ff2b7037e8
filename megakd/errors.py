"""User-facing errors: one line, naming the fix. CLIs print them without a traceback."""

import functools
import sys


class MegakdError(Exception):
    """Base class for errors a user can cause and fix (bad config, bad path, bad data)."""


class ConfigError(MegakdError, ValueError):
    """Bad or unknown configuration key/value."""


class DataError(MegakdError):
    """Missing, corrupt or mismatched data files."""


class StoreError(DataError):
    """Missing, corrupt or mismatched offline teacher-logits store."""


class CheckpointError(MegakdError):
    """Missing or incompatible checkpoint."""


class PlatformError(MegakdError):
    """A requested backend/feature is not available on this machine (e.g. FP8 without a GPU)."""


def cli_main(fn):
    """Wrap a CLI `main` so that a MegakdError prints as one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MegakdError as e:
            rank = _rank_prefix()
            print(f"{rank}error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def _rank_prefix() -> str:
    import os

    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
