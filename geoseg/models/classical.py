"""Classical segmentation to compare deep models against: spectral indices, Otsu thresholds, regions."""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["BASELINES", "REGION_BASELINES", "ClassicalSegmenter", "RegionSegmenter", "colour_regions",
           "normalized_difference", "otsu_threshold"]

log = logging.getLogger(__name__)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b) as float32, NaN where both are 0: NDWI is (green, nir), NDVI is (nir, red). Values below
    0 count as 0: reflectance a little under 0 (Landsat Collection 2 stores it over dark water) made the sum
    negative and the index of such water -3, which called it dry (h126).

    >>> normalized_difference(np.array([3.0, 0.0, 0.004]), np.array([1.0, 0.0, -0.008])).tolist()
    [0.5, nan, 1.0]
    """
    a, b = np.maximum(np.asarray(a, np.float32), 0), np.maximum(np.asarray(b, np.float32), 0)
    # over: an ESRI raster's nodata, -3.4e38, added to itself (those pixels are masked; numpy's warning with its
    # source line read as a crash, h105)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return (a - b) / (a + b)


def otsu_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold from a histogram: the cut that maximises the between-class variance.

    Working from a histogram lets a raster of any size be thresholded after one
    pass of block-wise `numpy.histogram` calls.

    >>> counts, edges = np.histogram(np.r_[np.zeros(50), np.ones(50)], bins=10, range=(0, 1))
    >>> 0.0 < otsu_threshold(counts, edges) < 1.0
    True

    The cut is an edge of `edges`, to 12 decimals: those of ``np.linspace(-1, 1, 401)`` carry float noise,
    and flood.json gave ``"ndwi_threshold": 0.040000000000000036`` for the 0.040 its report showed (the
    rounded cut splits the pixels as the edge does: none lie between them).
    """
    counts = np.asarray(counts, np.float64)
    if np.count_nonzero(counts) < 2:  # one value (a grey or uniform image): nothing to split, nothing above
        return round(float(edges[-1]), 12)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)
    weight1 = weight0[-1] - weight0
    cum_mean = np.cumsum(counts * centres)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean0 = cum_mean / weight0
        mean1 = (cum_mean[-1] - cum_mean) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    return round(float(edges[1:][np.nanargmax(between[:-1])]), 12)


# --- classical segmenters: thresholds, region growing and edges, as registered models -------------

BASELINES = {
    "threshold": "Otsu thresholds: water by a water index, vegetation by a greenness index, the rest 'other'",
    "region-growing": "region growing by hysteresis: confident index seeds grow into connected pixels above a "
                      "lower cut",
    "edges-watershed": "Sobel edges of the indices, flooded by watershed from confident seeds",
}
# water and vegetation drawn as the default model draws them, and read from colour labels in its labels' colours
_CLASSES = [{"id": 0, "name": "other", "color": "#D9D0B8"},
            {"id": 1, "name": "water", "color": "#0072B2", "label_color": "#E2A929"},
            {"id": 2, "name": "vegetation", "color": "#009E73", "label_color": "#FEDD3A"}]


def _indices(batch: np.ndarray, nir: bool) -> tuple[np.ndarray, np.ndarray]:
    """Water and vegetation indices of (..., bands): NDWI/NDVI with a 4th NIR band, else RGB indices
    (blue-red normalised difference, in -1..1, and normalised excess green, in -1..2)."""
    r, g, b = (np.maximum(batch[..., i], 0) for i in range(3))  # reflectance under 0 as 0 (`normalized_difference`)
    if nir:
        n = batch[..., 3]
        return normalized_difference(g, n), normalized_difference(n, r)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # over: as in normalized_difference
        total = r + g + b
        greenness = (2 * g - r - b) / total  # excess green, normalised
    return normalized_difference(b, r), greenness


class ClassicalSegmenter:
    """A classical method behind the Segmenter protocol, for comparison with deep models.

    Thresholds come from the whole raster, not the tile: the pipeline calls
    `calibrate` on a decimated read before tiling, and the chosen cuts travel in
    the model reference, so every chunk uses the same ones.
    """

    margin = 16

    def __init__(self, method: str, *, nir: bool = False, water: float | None = None,
                 vegetation: float | None = None) -> None:
        from geoseg.models.card import ModelCard

        if method not in BASELINES:
            raise ValueError(f"method must be one of {', '.join(BASELINES)}. Received: method={method!r}")
        self.method, self.nir = method, nir
        self.water, self.vegetation = water, vegetation
        name = f"{method}{'-nir' if nir else ''}"
        self.card = ModelCard.from_dict({  # version 2: water and vegetation drawn blue and green, not in the Dubai
            # labels' orange and yellow; a survey redoes masks of version 1 rather than mix the two palettes
            "name": name, "version": "2", "description": BASELINES[method] + (" (NDWI/NDVI from NIR)" if nir else ""),
            "classes": _CLASSES, "bands": [1, 2, 3, 4] if nir else [1, 2, 3],
            "band_names": ["red", "green", "blue", "nir"] if nir else ["red", "green", "blue"],
            "normalization": {"method": "none"}, "margin": 0 if method == "threshold" else self.margin,
            "training": {"data": "none: unsupervised classical method"},
        })

    def calibrate(self, sample: np.ndarray, valid: np.ndarray) -> dict[str, float]:
        """Otsu cuts over a decimated (rows, cols, bands) read of the whole raster: water first, then
        vegetation among the pixels that are not water (one cut per index cannot split three modes)."""
        water, veg = _indices(sample.astype(np.float32), self.nir)

        def cut(index, where, name, top=1.0):
            values = index[where & np.isfinite(index)]
            # bins of 2/256 as over (-1, 1), on to the index's top: greenness reaches 2 (pure green), and values
            # over 1 were left out of the histogram, whose one bin then said "takes one value" of a green image
            counts, edges = np.histogram(values, bins=round(128 * (top + 1)), range=(-1, top))
            if values.size and np.count_nonzero(counts) < 2:
                log.warning("%s: the %s index takes one value over the whole raster (are the bands copies of one "
                            "band, or is the image uniform?), so no pixel is called %s", self.method, name, name)
            return otsu_threshold(counts, edges) if values.size else 1.0

        cuts = {"water": cut(water, valid, "water")}
        cuts["vegetation"] = cut(veg, valid & ~(water > cuts["water"]), "vegetation",  # among what is not water
                                 1.0 if self.nir else 2.0)
        return cuts

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """One-hot (N, H, W, 3) of other, water, vegetation."""
        if self.water is None or self.vegetation is None:
            raise ValueError("calibrate() first: thresholds come from the whole raster")
        out = np.zeros(batch.shape[:3] + (3,), np.float32)
        for i, image in enumerate(batch):
            out[i] = np.eye(3, dtype=np.float32)[self._classify(image.astype(np.float32))]
        return out

    def _classify(self, image: np.ndarray) -> np.ndarray:
        water, veg = (np.nan_to_num(v, nan=-1.0) for v in _indices(image, self.nir))
        if self.method == "threshold":
            return np.select([water > self.water, veg > self.vegetation], [1, 2], 0)
        if self.method == "region-growing":
            from skimage.filters import apply_hysteresis_threshold

            grow = [apply_hysteresis_threshold(index, cut - 0.05, cut + 0.05)
                    for index, cut in ((water, self.water), (veg, self.vegetation))]
            return np.select(grow, [1, 2], 0)
        from skimage.filters import sobel
        from skimage.segmentation import watershed

        markers = np.zeros(water.shape, np.int32)
        markers[(water < self.water - 0.05) & (veg < self.vegetation - 0.05)] = 1
        markers[water > self.water + 0.05] = 2
        markers[(veg > self.vegetation + 0.05) & (markers == 0)] = 3
        if not markers.any():
            return np.zeros(water.shape, np.int64)
        regions = watershed(np.maximum(sobel(water), sobel(veg)), markers)
        return np.choose(regions - 1, [0, 1, 2])


# --- unlabeled regions: edges + compact watershed ----------------------------------------------------

REGION_BASELINES = {
    "watershed-regions": "unlabeled regions: Sobel edges of the image flooded by compact watershed from seeds "
                         "every 16 px; neighbouring regions get different colours. geoseg evaluate gives each "
                         "region its majority label class",
}
# Okabe and Ito's colour-blind-safe set, the six that a planar colouring uses first: under a deuteranopia simulation
# the closest two differ by CIEDE2000 11.6, where Set1's blue and purple (4.2) and red and brown (3.1) ran together.
# The eighth is their black: grey #999999 was 6.2 from the reddish purple under deuteranopia (h143); with black, every
# pair of the eight is 11.6 or more apart under deuteranopia, 12.2 under protanopia and 21.7 for normal vision
_REGION_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#F0E442", "#56B4E9", "#D55E00", "#000000")


def colour_regions(regions: np.ndarray, n_colours: int = len(_REGION_COLOURS)) -> np.ndarray:
    """Colour a (rows, cols) int region raster so that 4-neighbouring regions differ.

    Greedy colouring in smallest-last order: the adjacency of 4-connected regions
    is planar, which this order colours with at most 6 colours. Colours beyond
    `n_colours` (regions that are not 4-connected can make that happen) wrap around.

    >>> colours = colour_regions(np.array([[1, 1, 2], [3, 3, 2]]))  # three regions, each touching both others
    >>> sorted(np.unique(colours).tolist()), bool(colours[0, 0] == colours[1, 0])
    ([0, 1, 2], False)
    """
    import networkx as nx

    pairs = [np.stack([a[a != b], b[a != b]]) for a, b in ((regions[:, :-1], regions[:, 1:]),
                                                           (regions[:-1], regions[1:]))]
    graph = nx.Graph()
    graph.add_nodes_from(np.unique(regions).tolist())
    graph.add_edges_from(np.unique(np.concatenate(pairs, axis=1), axis=1).T.tolist())
    colouring = nx.greedy_color(graph, strategy="smallest_last")
    lookup = np.zeros(int(regions.max()) + 1, np.uint8)
    for region, colour in colouring.items():
        lookup[region] = colour % n_colours
    return lookup[regions]


class RegionSegmenter:
    """Unlabeled regions behind the Segmenter protocol: the card's "classes" are colours, not land cover.

    Each chunk is cut into regions by compact watershed (Neubert & Protzel 2014) on the
    strongest Sobel edge of the bands, from a grid of seeds every `spacing` px; the
    regions are coloured so that neighbours differ (`colour_regions`). The card says
    ``"output": "regions"``, and `geoseg evaluate` then gives each region its majority
    label class. Regions are cut where chunks meet.
    """

    margin = 16

    def __init__(self, method: str = "watershed-regions", *, spacing: float = 16, compactness: float = 0.01) -> None:
        from geoseg.errors import ModelError
        from geoseg.models.card import ModelCard

        if method not in REGION_BASELINES:
            raise ValueError(f"method must be one of {', '.join(REGION_BASELINES)}. Received: method={method!r}")
        if not spacing >= 1 or not compactness >= 0:
            raise ModelError(f"{method}: spacing must be >= 1 px and compactness >= 0. "
                             f"Received: spacing={spacing!r}, compactness={compactness!r}")
        self.method, self.spacing, self.compactness = method, int(spacing), float(compactness)
        self.card = ModelCard.from_dict({
            "name": method, "version": "1", "description": REGION_BASELINES[method], "output": "regions",
            "classes": [{"id": i, "name": f"region colour {i + 1}", "color": c} for i, c in enumerate(_REGION_COLOURS)],
            "bands": [1, 2, 3], "normalization": {"method": "percentile", "low": 2, "high": 98},
            "margin": self.margin, "training": {"data": "none: unsupervised classical method"},
        })

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """One-hot (N, H, W, 8) of each pixel's region colour."""
        from skimage.filters import sobel
        from skimage.segmentation import watershed

        out = np.zeros(batch.shape[:3] + (len(_REGION_COLOURS),), np.float32)
        for i, image in enumerate(batch):
            edges = np.max([sobel(image[..., b]) for b in range(image.shape[-1])], axis=0)
            markers = np.zeros(edges.shape, np.int32)
            seeds = markers[self.spacing // 2 :: self.spacing, self.spacing // 2 :: self.spacing]
            seeds[...] = np.arange(1, seeds.size + 1).reshape(seeds.shape)
            regions = watershed(edges, markers, compactness=self.compactness)
            out[i] = np.eye(len(_REGION_COLOURS), dtype=np.float32)[colour_regions(regions)]
        return out
