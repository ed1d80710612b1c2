"""The store's one error type, apart so that the migrations can raise it too."""

from __future__ import annotations


class StoreError(Exception):
    """A run directory that cannot be used as asked; the message names the fix."""
