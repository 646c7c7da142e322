"""napari-deeppt: gene expression and treatment response from H&E whole-slide images.

The public API is declared once, in ``__init__.pyi``, and loaded lazily (napari's
``lazy_loader`` pattern), so ``import napari_deeppt`` stays fast: no torch, dask or napari
until a function that needs them is used.
"""

import lazy_loader as _lazy

from ._version import __version__ as __version__

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
