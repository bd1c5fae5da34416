"""Exceptions that carry a message a user can act on.

Every error a user can cause (a missing folder, an unreadable image, missing
weights, an unknown conf name, a broken dataset layout, an empty result) is
raised as a subclass of :class:`UserError`. The CLI prints the message of such an
error without a traceback and exits with code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the input, whose message says what to fix."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """No weights file could be found or downloaded."""


class WeightsChecksumError(UserError, ValueError):
    """A weights file exists but its sha256 does not match the known file."""


class ImageReadError(UserError, ValueError):
    """An image file is missing, unreadable or in an unsupported format."""


class UnknownConfError(UserError, ValueError):
    """A conf name that is not among the known confs."""


class DatasetLayoutError(UserError, FileNotFoundError):
    """A dataset folder does not have the expected layout."""


class EmptyResultError(UserError, RuntimeError):
    """A step produced nothing usable (no images, no matches, no 3D points...)."""
