"""One exception family for everything a user can get wrong.

Every message names the file (or object) concerned, what is wrong with it and, where there is
one, the fix. Front ends (napari, the command line) show ``str(error)`` as it is; nobody should
see a traceback from tifffile, zarr or torch for a user mistake.
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "DeepPTError",
    "InputTypeError",
    "MissingMppError",
    "NoTissueWarning",
    "NotRGBError",
    "OutputError",
    "SlideFormatError",
    "SlideNotFoundError",
    "SlideReadError",
    "TileGridError",
    "WeightsMismatchError",
]


class DeepPTError(Exception):
    """Base class of every error napari-deeppt raises on purpose."""


class SlideNotFoundError(DeepPTError, FileNotFoundError):
    """The slide path does not exist."""


class SlideFormatError(DeepPTError, ValueError):
    """The file exists but is not a slide format we can read (or its header is corrupt)."""


class SlideReadError(DeepPTError, OSError):
    """Pixels could not be read or decoded (a truncated or corrupt file)."""


class MissingMppError(DeepPTError, ValueError):
    """The slide's physical pixel size is unknown and a step needs it."""

    def __init__(self, path: object, needed_for: str = "this step") -> None:
        super().__init__(
            f"{path}: the slide has no physical pixel size (µm per pixel) in its metadata, "
            f"and {needed_for} needs it. Pass it explicitly: open_slide(path, mpp=0.25) "
            "(µm per level-0 pixel) or open_slide(path, magnification=40); on the command line "
            "--mpp 0.25 or --magnification 40; in napari, set it in the dock before running."
        )


class NotRGBError(DeepPTError, ValueError):
    """The slide is not an RGB brightfield image (grayscale or fluorescence)."""


class CancelledError(DeepPTError):
    """A long-running operation was cancelled by the user; nothing partial was kept."""


class TileGridError(DeepPTError, ValueError):
    """A tile grid cannot be made as asked (tiles larger than the slide, bad parameters)."""


class NoTissueWarning(UserWarning):
    """Tissue detection found nothing: the slide is blank or the thresholds are too strict."""


class WeightsNotFoundError(DeepPTError, FileNotFoundError):
    """Model weights are not available (offline, missing file, wrong architecture)."""


class WeightsMismatchError(WeightsNotFoundError):
    """A weights file was read but its tensors do not fit the extractor (another architecture)."""


class BundleError(DeepPTError, ValueError):
    """A model bundle file is missing, corrupt or not a napari-deeppt bundle."""


class BundleMismatchError(DeepPTError, ValueError):
    """Features, genes or tiles do not match what a model bundle expects."""


class ExpressionTableError(DeepPTError, ValueError):
    """An expression matrix or manifest cannot be used as given (names what and where)."""


class InputTypeError(DeepPTError, TypeError):
    """An argument of the wrong kind (a dict where a file path or a table belongs)."""


class OutputError(DeepPTError, OSError):
    """An output cannot be written (a folder that cannot be made, a full disk, no permission)."""
