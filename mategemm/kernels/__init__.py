"""One module per kernel family, named as its kernels_src/<name>.cuh."""
