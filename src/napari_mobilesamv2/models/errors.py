"""Errors of the model layer (re-exported from :mod:`napari_mobilesamv2.errors`)."""

from ..errors import (
    CheckpointError,
    IntegrityError,
    UntrustedWeightsError,
    WeightsUnavailableError,
)

__all__ = ["CheckpointError", "IntegrityError", "UntrustedWeightsError", "WeightsUnavailableError"]
