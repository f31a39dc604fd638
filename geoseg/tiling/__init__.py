"""Pure geometry and scheduling: tile grid, mirrored margins, the Dask graph; no Keras, no GDAL."""

from geoseg.tiling.graph import windowed_map
from geoseg.tiling.grid import chunk_lengths, coerce_size, mirror_pad, pad_to_multiple, round_up, tile_offsets

__all__ = ["chunk_lengths", "coerce_size", "mirror_pad", "pad_to_multiple", "windowed_map", "round_up", "tile_offsets"]
