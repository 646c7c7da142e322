"""``python -m napari_deeppt.cli``: the same as ``deeppt``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
