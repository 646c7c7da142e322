"""Device-side work of the feature engine: JPEG tiles decoded on the device
(:mod:`.jpeg`), Pillow's resize reproduced in torch (:mod:`.resample`) and features copied
back to the host one batch late through pinned memory (:mod:`.readback`).

Everything here also runs on the CPU (the tests check it there); it pays on CUDA.
"""
