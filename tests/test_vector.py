"""Vectorisation: blockwise equals whole, attributes, areas, formats, simplification, styles."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.transform import from_origin

from geoseg.errors import InputError, OutputError
from geoseg.vector import vectorize


@pytest.fixture
def make_mask(tmp_path):
    def make(data, *, crs="EPSG:32633", transform=None, name="mask.tif", names=("a", "b", "c")):
        path = tmp_path / name
        transform = transform or from_origin(400000.0, 6000000.0, 2.0, 2.0)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype="uint8", crs=crs, transform=transform, nodata=255) as ds:
            ds.write(data, 1)
            if names is not None:  # None: a raster of no classes, such as a confidence raster
                ds.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 255, 0, 255), 2: (0, 0, 255, 255)})
                ds.update_tags(CLASS_NAMES=json.dumps({str(i): n for i, n in enumerate(names)}))
        return path

    return make


def noisy_mask(shape, seed=0, smooth=3):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(3,) + shape), (0, smooth, smooth))
    mask = field.argmax(0).astype(np.uint8)
    mask[rng.random(shape) < 0.01] = 255  # scattered nodata
    return mask


def _signature(frame):
    return sorted(zip(frame["class_id"], np.round(frame["area_m2"], 6)))


@pytest.mark.parametrize(
    "shape, block",
    [
        ((200, 230), 32),  # many blocks, objects cross many block edges
        ((200, 230), 7),  # tiny blocks: most objects are cut several times
        ((64, 300), 50),  # strip
    ],
)
@pytest.mark.parametrize("smooth", [1, 4])  # noisy and smooth masks
def test_blockwise_equals_whole(make_mask, tmp_path, shape, block, smooth):
    path = make_mask(noisy_mask(shape, seed=block, smooth=smooth))
    tiled = vectorize(path, tmp_path / "tiled.gpkg", block=block)
    whole = vectorize(path, tmp_path / "whole.gpkg", block=10_000)
    a, b = gpd.read_file(tmp_path / "tiled.gpkg"), gpd.read_file(tmp_path / "whole.gpkg")
    assert tiled.polygons == whole.polygons == len(a) == len(b)
    assert _signature(a) == _signature(b)
    assert a.geometry.is_valid.all()
    # the polygons also cover exactly the same ground
    assert shapely.union_all(a.geometry.values).symmetric_difference(
        shapely.union_all(b.geometry.values)).area == pytest.approx(0, abs=1e-6)


def test_a_region_across_block_borders_keeps_every_hole_and_joins_only_by_edges(make_mask, tmp_path):
    """Cut polygons are joined by the pixels either side of a seam, and a joined region is the union of its pieces'
    exteriors with their holes kept: the same polygons, holes and all, as one block gives."""
    data = np.zeros((40, 40), np.uint8)
    data[4:36, 4:36] = 1  # one region in all four blocks of 20
    data[15:25, 15:25] = 0  # a hole across both seams
    data[[8, 8, 30, 30], [8, 30, 8, 30]] = 2  # a hole inside each block's piece
    data[19, 10] = 0  # a hole on a seam: a bay of the top left piece, closed by the piece below
    data[27, 12] = 255  # a nodata hole
    data[1, 19] = data[2, 20] = 2  # pixels of one class that touch across a seam at a corner only: two polygons
    mask = make_mask(data)
    tiled = vectorize(mask, tmp_path / "tiled.gpkg", block=20)
    whole = vectorize(mask, tmp_path / "whole.gpkg", block=10_000)
    a, b = gpd.read_file(tmp_path / "tiled.gpkg"), gpd.read_file(tmp_path / "whole.gpkg")
    assert tiled.polygons == whole.polygons == len(a) == len(b)
    assert a.geometry.is_valid.all()

    def key(frame):  # seams leave vertices along straight edges: without them, the same rings
        return sorted(zip(frame["class_id"], shapely.to_wkb(shapely.normalize(shapely.simplify(frame.geometry.values, 0)))))

    assert key(a) == key(b)
    region = a[a["class_id"] == 1].geometry.values
    assert len(region) == 1 and shapely.get_num_interior_rings(region[0]) == 7
    assert (a["class_id"] == 2).sum() == 4 + 2


def test_a_polygon_that_takes_specks_averages_the_confidence_of_all_its_pixels(make_mask, tmp_path):
    """A water square that took a 4-px speck reported the confidence of its own 96 px, 90.0, where its 100 px
    average 86.8 (h106)."""
    data = np.zeros((40, 40), np.uint8)
    data[10:20, 10:20] = 1
    data[14:16, 14:16] = 2  # a speck of 4 px (16 m²) inside the square
    path = make_mask(data)
    with rasterio.open(path) as src:
        profile = src.profile
    conf = tmp_path / "conf.tif"
    with rasterio.open(conf, "w", **profile) as ds:
        ds.write(np.select([data == 1, data == 2], [90, 10], 50).astype(np.uint8), 1)
    vectorize(path, tmp_path / "merged.gpkg", confidence=conf, min_area=20, specks="merge")
    frame = gpd.read_file(tmp_path / "merged.gpkg")
    b = frame[frame.class_name == "b"].iloc[0]
    assert b.area_m2 == pytest.approx(400) and b.confidence == pytest.approx((96 * 90 + 4 * 10) / 100)
    assert list(frame.columns) == ["class_id", "class_name", "confidence", "area_m2", "perimeter_m", "geometry"]


def test_attributes_areas_and_confidence(make_mask, tmp_path):
    data = np.full((40, 50), 0, np.uint8)
    data[10:20, 10:30] = 1  # 10 x 20 px of 2 m = 800 m²
    data[30:40, 0:50] = 255
    path = make_mask(data)
    conf = tmp_path / "conf.tif"
    with rasterio.open(path) as src:
        profile = src.profile
    with rasterio.open(conf, "w", **profile) as ds:
        ds.write(np.where(data == 1, 80, 60).astype(np.uint8), 1)
    result = vectorize(path, tmp_path / "out.gpkg", confidence=conf, block=16)
    frame = gpd.read_file(tmp_path / "out.gpkg")
    b = frame[frame.class_name == "b"].iloc[0]
    assert b.area_m2 == pytest.approx(800) and b.perimeter_m == pytest.approx(120)
    assert b.confidence == pytest.approx(80)
    a = frame[frame.class_name == "a"].iloc[0]
    assert a.area_m2 == pytest.approx((30 * 50 - 200) * 4) and a.confidence == pytest.approx(60)
    assert result.per_class == {"a": 1, "b": 1}
    assert (tmp_path / "out.qml").read_text().count("<category ") == 3


def test_keep_min_area_and_to_crs(make_mask, tmp_path):
    data = np.zeros((30, 30), np.uint8)
    data[2:4, 2:4] = 1  # 16 m² speck
    data[10:25, 10:25] = 1  # 900 m²
    data[26:28, 26:28] = 2
    path = make_mask(data)
    vectorize(path, tmp_path / "b.geojson", keep=["b"], min_area=50, to_crs="EPSG:4326", block=8)
    frame = gpd.read_file(tmp_path / "b.geojson")
    assert len(frame) == 1 and frame.crs == "EPSG:4326"
    assert frame.area_m2.iloc[0] == pytest.approx(900)
    with pytest.raises(InputError, match="class 'roads' is not in this mask"):
        vectorize(path, tmp_path / "x.gpkg", keep=["roads"])
    with pytest.raises(InputError, match="class id 9 is not in this mask. Classes: 0 a, 1 b"):  # was 0 polygons
        vectorize(path, tmp_path / "x.gpkg", keep=[9])
    with pytest.raises(InputError, match="'EPSG:999999' is not a CRS"):  # was pyproj's traceback
        vectorize(path, tmp_path / "x.gpkg", to_crs="EPSG:999999")
    assert not (tmp_path / "x.gpkg").exists()


def test_geographic_areas_are_geodesic(make_mask, tmp_path):
    data = np.zeros((10, 10), np.uint8)
    path = make_mask(data, crs="EPSG:4326", transform=from_origin(10.0, 60.001, 0.0001, 0.0001))
    vectorize(path, tmp_path / "g.gpkg")
    frame = gpd.read_file(tmp_path / "g.gpkg")
    assert frame.area_m2.sum() == pytest.approx(100 * 5.58 * 11.13, rel=0.01)


def test_geodesic_areas_of_wide_polygons_follow_the_parallels_whatever_the_block(make_mask, tmp_path):
    """Geodesics between a polygon's corners cut across the parallels its pixels' edges follow: a 90 degree wide
    band at 60-70 north read 30% small, and block edges (more vertices) changed the areas with --block."""
    from pyproj import Geod

    data = np.zeros((10, 90), np.uint8)  # 1 degree pixels, 0 to 90 east, 70 to 60 north
    data[:, 45:] = 1
    path = make_mask(data, crs="EPSG:4326", transform=from_origin(0.0, 70.0, 1.0, 1.0))
    geod = Geod(ellps="WGS84")
    truth = [abs(geod.geometry_area_perimeter(shapely.segmentize(shapely.box(x0, 60, x0 + 45, 70), 0.001))[0])
             for x0 in (0, 45)]
    for block in (2048, 16, 7):
        vectorize(path, tmp_path / f"g{block}.gpkg", block=block)
        frame = gpd.read_file(tmp_path / f"g{block}.gpkg").sort_values("class_id")
        assert list(frame.area_m2) == pytest.approx(truth, rel=2e-5)


def test_geodesic_perimeters_count_the_holes_as_planar_ones_do(make_mask, tmp_path):
    """pyproj's geometry_area_perimeter gives a polygon's outer ring only: in EPSG:4326 or Web Mercator a lake's
    islands were left out of its perimeter_m (29% short), which in UTM counts them."""
    from pyproj import Geod

    data = np.zeros((20, 20), np.uint8)
    data[4:16, 4:16] = 1  # a lake with an island
    data[8:12, 8:12] = 0
    geod = Geod(ellps="WGS84")
    for crs, transform in (("EPSG:4326", from_origin(10.0, 60.002, 0.0001, 0.0001)),
                           ("EPSG:3857", from_origin(1_113_194.9, 8_399_737.9, 10.0, 10.0))):
        path = make_mask(data, crs=crs, transform=transform, name=f"lake{crs[5:]}.tif")
        vectorize(path, tmp_path / "lake.gpkg", overwrite=True)
        lake = gpd.read_file(tmp_path / "lake.gpkg").query("class_id == 1").iloc[0]
        rings = gpd.GeoSeries([lake.geometry.exterior, *lake.geometry.interiors], crs=crs).segmentize(
            1e-5 if crs == "EPSG:4326" else 1.0).to_crs("EPSG:4326")
        assert len(rings) == 2
        assert lake.perimeter_m == pytest.approx(sum(geod.geometry_length(r) for r in rings), rel=1e-4)


def test_simplify_keeps_a_valid_coverage(make_mask, tmp_path):
    data = noisy_mask((120, 120), seed=3, smooth=4)
    data[data == 255] = 0  # a full coverage: no nodata holes
    path = make_mask(data)
    vectorize(path, tmp_path / "raw.gpkg", block=40)
    vectorize(path, tmp_path / "simple.gpkg", block=40, simplify=3.0)
    raw, simple = gpd.read_file(tmp_path / "raw.gpkg"), gpd.read_file(tmp_path / "simple.gpkg")
    assert len(simple) == len(raw)
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < shapely.get_num_coordinates(
        raw.geometry.values).sum()
    assert simple.geometry.is_valid.all()
    union = shapely.union_all(simple.geometry.values).area
    assert union == pytest.approx(simple.geometry.area.sum(), rel=1e-9)  # no overlaps
    assert union == pytest.approx(120 * 120 * 4.0, rel=1e-9)  # no gaps: still covers the raster


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".fgb", ".parquet"])
def test_formats(make_mask, tmp_path, suffix):
    path = make_mask(noisy_mask((40, 40), smooth=4))
    result = vectorize(path, tmp_path / f"layer{suffix}")
    reader = gpd.read_parquet if suffix == ".parquet" else gpd.read_file
    assert len(reader(tmp_path / f"layer{suffix}")) == result.polygons > 0


def test_bad_requests(make_mask, tmp_path):
    path = make_mask(np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match="unknown vector format"):
        vectorize(path, tmp_path / "x.shp")
    (tmp_path / "x.gpkg").write_text("")
    with pytest.raises(OutputError, match="--overwrite"):
        vectorize(path, tmp_path / "x.gpkg")
    with pytest.raises(OutputError, match="missing: no such folder. Create it"):
        vectorize(path, tmp_path / "missing" / "x.gpkg")
    with pytest.raises(OutputError, match="x.gpkg: a file, not a folder"):
        vectorize(path, tmp_path / "x.gpkg" / "y.gpkg")
    foreign = tmp_path / "foreign.tif"  # another tool's binary mask: no CLASS_NAMES, black 0 in its table
    with rasterio.open(foreign, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
        ds.write(np.eye(4, dtype=np.uint8), 1)
        ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 255, 255, 255)})
    assert vectorize(foreign, tmp_path / "bg.gpkg", keep=[0]).per_class == {"class 0": 2}  # its ids are not refused
    with pytest.raises(InputError, match="has no CRS, so its polygons cannot be reprojected"):  # was a traceback
        vectorize(foreign, tmp_path / "z.gpkg", to_crs="EPSG:4326")                              # after the work
    rgb = tmp_path / "rgb.tif"
    with rasterio.open(rgb, "w", driver="GTiff", width=4, height=4, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="one uint8 band"):
        vectorize(rgb, tmp_path / "y.gpkg")
    # were range()'s ValueError, an empty layer, a silent "drop", and numpy's "weights and list" error
    for kwargs, match in (({"block": 0}, "block must be a positive"), ({"block": -3}, "block must be a positive"),
                          ({"specks": "bogus", "min_area": 1}, "specks must be 'drop' or 'merge'"),
                          ({"min_area": -5}, "min_area must be"), ({"confidence": rgb}, "the confidence raster is 4 x 4 px")):
        with pytest.raises(InputError, match=match):
            vectorize(path, tmp_path / "k.gpkg", **kwargs)
    assert not (tmp_path / "k.gpkg").exists()
    assert vectorize(path, tmp_path / "one.gpkg", keep="a").per_class == {"a": 1}  # was "class 'a'"... by letters
    assert vectorize(path, tmp_path / "one.gpkg", keep=np.int64(0), overwrite=True).per_class == {"a": 1}


def test_a_mask_in_a_zip_archive_by_a_relative_path(make_mask, tmp_path, monkeypatch):
    """The class tables were read from the path as given: rasterio's error for a relative zip:// path."""
    import zipfile

    path = make_mask(np.zeros((5, 5), np.uint8))
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        archive.write(path, "mask.tif")
    monkeypatch.chdir(tmp_path)
    assert vectorize("zip://m.zip!mask.tif", tmp_path / "z.gpkg").per_class == {"a": 1}


def test_zonal_composition_counts_pixel_centres(make_mask):
    from geoseg.vector import zonal_composition

    data = np.zeros((20, 20), np.uint8)
    data[:, 10:] = 1
    data[0, 0] = 255
    path = make_mask(data)  # 2 m pixels from (400000, 6000000)
    x0, y0 = 400000.0, 6000000.0
    zones = gpd.GeoSeries(
        [
            shapely.box(x0, y0 - 40, x0 + 40, y0),  # the whole raster
            shapely.box(x0 + 16, y0 - 8, x0 + 24, y0),  # 4 x 4 px straddling the class edge
            shapely.box(x0 + 15.5, y0 - 6.5, x0 + 24.5, y0 - 0.5),  # overlaps the previous zone
        ],
        crs="EPSG:32633",
    ).to_crs("EPSG:4326")  # zones in another CRS are reprojected
    pixels, areas = zonal_composition(path, zones, 2, block=6)
    assert pixels[0].tolist() == [199, 200]
    assert pixels[1].tolist() == [8, 8]
    assert pixels[2].tolist() == [6, 6]
    assert areas[1].tolist() == pytest.approx([32.0, 32.0])


def test_a_zone_smaller_than_a_pixel_takes_the_pixel_under_it(make_mask):
    """An area of interest smaller than a pixel (a building on 10 m imagery), inside the raster, read 0 px, no
    coverage and no class: it holds no pixel's centre (h101). It takes the pixel under its centre, as QGIS does."""
    from geoseg.vector import zonal_composition
    from geoseg.workflows.common import zone_table

    data = np.zeros((20, 20), np.uint8)
    data[:, 10:] = 1
    path = make_mask(data)  # 2 m pixels from (400000, 6000000)
    x0, y0 = 400000.0, 6000000.0
    zones = gpd.GeoDataFrame({"name": ["shed", "hut", "outside"]}, geometry=[
        shapely.box(x0 + 22.1, y0 - 3.9, x0 + 22.6, y0 - 3.3),  # in pixel (row 1, col 11), off its centre: class 1
        shapely.box(x0 + 4.1, y0 - 3.9, x0 + 4.6, y0 - 3.3),  # in pixel (1, 2): class 0
        shapely.box(x0 + 50.1, y0 - 3.9, x0 + 50.6, y0 - 3.3)], crs="EPSG:32633")  # past the raster's edge
    pixels, areas = zonal_composition(path, zones, 3)
    assert pixels.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert areas[0].tolist() == pytest.approx([0.0, 4.0, 0.0])
    rows = zone_table(path, zones, "name", [(0, "a"), (1, "b")], name="zone")
    assert (rows[0]["b_pct"], rows[0]["coverage_pct"]) == (100.0, 100.0)


def test_zones_on_a_raster_across_the_antimeridian_count_their_pixels(make_mask):
    """A raster in EPSG:4326 written from 179.9 to 180.1 east: zones reprojected into it came back at -180, so one
    across the line counted half its pixels, one beyond it none, and that one alone was refused as outside."""
    from geoseg.vector import zonal_composition
    from geoseg.workflows.common import check_layer_overlaps

    data = np.zeros((30, 40), np.uint8)
    data[:, 20:] = 1  # east of 180
    path = make_mask(data, crs="EPSG:4326", transform=from_origin(179.9, 10.0, 0.005, 0.005))
    boxes = [(179.95, 9.9, 180.05, 9.95), (180.02, 9.9, 180.09, 9.95)]  # across the line; wholly east of it
    zones = gpd.GeoDataFrame(geometry=[shapely.segmentize(shapely.box(*b), 0.001) for b in boxes],
                             crs="EPSG:4326").to_crs("EPSG:3857")  # as a layer drawn in Web Mercator holds them
    assert zones.total_bounds[0] < -2e7  # stored past the line, at -180
    pixels, _ = zonal_composition(path, zones, 2)
    assert pixels.tolist() == [[10 * 10, 10 * 10], [0, 14 * 10]]
    check_layer_overlaps(zones.iloc[[1]], path, what="zones")  # was refused
    # shapes are moved whole: a Pacific zone drawn from 175 to 182 east on a global raster went round the globe
    world = make_mask(np.zeros((180, 360), np.uint8), crs="EPSG:4326", transform=from_origin(-180, 90, 1, 1),
                      name="world.tif")
    pacific = gpd.GeoSeries([shapely.box(175, -20, 182, -10)], crs="EPSG:4326")
    assert zonal_composition(world, pacific, 2)[0].tolist() == [[5 * 10, 0]]  # the raster ends at 180


@pytest.mark.parametrize("transform", [
    from_origin(400000.0, 6000000.0, 1.0, 1.0),
    from_origin(512345.67, 4987654.32, 0.1, 0.1),  # each zone's window transform rounded the shared edges apart
    from_origin(12.3456, 47.6543, 1 / 3600, 1 / 3600),
])
def test_districts_cut_along_pixel_centres_count_every_pixel_once(tmp_path, transform):
    """Districts sharing edges that run through pixel centres: GDAL counts a centre on a polygon's top or bottom
    edge as inside, so both districts of an east-west edge counted its row of pixels (their pixels summed to more
    than the scene's), and each zone rasterised on its own window's transform put a north-south edge a hair apart
    in each, so that its column went to both zones or to neither. A centre on an edge now counts for the zone
    to its west or north, and a tiling of the raster counts every pixel once."""
    from geoseg.vector import zonal_composition

    rows, cols = np.mgrid[0:60, 0:70]
    cuts_x, cuts_y = [-1, 10.5, 33.5, 34.5, 61.5, 71], [-1, 0.5, 17.5, 40.5, 59.5, 61]  # 0.5: the first row's centres
    zones = []
    for i in range(len(cuts_x) - 1):
        for j in range(len(cuts_y) - 1):
            corners = [transform @ (cuts_x[i + a], cuts_y[j + b]) for a, b in ((0, 0), (1, 0), (1, 1), (0, 1))]
            zones.append(shapely.Polygon(corners))
    crs = "EPSG:4326" if transform.a < 0.01 else "EPSG:32633"
    zones = gpd.GeoSeries(zones, crs=crs)
    for name, data in (("columns", cols), ("rows", rows)):  # each pixel's class is its column, then its row
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=70, height=60, count=1, dtype="uint8", crs=crs,
                           transform=transform, nodata=255) as ds:
            ds.write(data.astype(np.uint8), 1)
        pixels, _ = zonal_composition(path, zones, 70, block=16)
        assert pixels.sum(axis=0).tolist() == np.bincount(data.ravel(), minlength=70).tolist()
    # the tie: the column of centres on x = 10.5 goes to the zones west of it, the row on y = 17.5 to those north
    first = pixels[:5].sum(axis=0)  # the westmost column of zones, by row
    assert first[17] == 11 and first[18] == 11 and first[0] == 11  # row 0 (on y = 0.5) in the northern zone
    assert [pixels[z].sum() for z in range(5)] == [11, 17 * 11, 23 * 11, 19 * 11, 0]


@pytest.mark.parametrize("transform", [
    Affine.translation(500000, 2800000) * Affine.rotation(30) * Affine.scale(2, -2),  # zones of 0 pixels, silently
    Affine(2, 0, 500000, 0, 2, 2799872),  # south-up: "Bounds and transform are inconsistent", a traceback
])
def test_zonal_composition_on_rotated_and_south_up_rasters(tmp_path, transform):
    from geoseg.vector import zonal_composition

    data = np.random.default_rng(0).integers(0, 3, (64, 64)).astype(np.uint8)
    path = tmp_path / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs="EPSG:32640",
                       transform=transform, nodata=255) as ds:
        ds.write(data, 1)
    rows, cols = np.mgrid[0:64, 0:64]
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    corner = transform * (0, 0)  # boxes at the first pixel's corner (the rotated raster's top left), and inside
    boxes = [shapely.box(corner[0], corner[1] - 20, corner[0] + 20, corner[1] + 20),
             *(shapely.box(x - 14.9, y - 14.9, x + 14.9, y + 14.9) for x, y in (transform * (20, 20), transform * (50, 30)))]
    pixels, _ = zonal_composition(path, gpd.GeoSeries(boxes, crs="EPSG:32640"), 3, block=24)
    for box, counted in zip(boxes, pixels):
        expected = np.bincount(data[shapely.contains_xy(box, xs, ys)], minlength=3)
        assert counted.tolist() == expected.tolist() and expected.sum() > 0


def test_specks_merge_into_their_neighbour(make_mask, tmp_path):
    data = np.zeros((30, 30), np.uint8)
    data[10:25, 10:25] = 1  # 900 m²
    data[12:14, 12:14] = 2  # a 16 m² speck inside it
    data[2:4, 2:4] = 1  # a 16 m² speck in class 0
    path = make_mask(data)
    vectorize(path, tmp_path / "m.gpkg", min_area=50, specks="merge", block=8)
    frame = gpd.read_file(tmp_path / "m.gpkg")
    assert sorted(frame.class_name) == ["a", "b"]
    areas = dict(zip(frame.class_name, frame.area_m2))
    assert areas == {"a": pytest.approx(900 * 4 - 900), "b": pytest.approx(900)}
    assert frame.geometry.is_valid.all()
    assert shapely.union_all(frame.geometry.values).area == pytest.approx(30 * 30 * 4)  # no holes left


@pytest.mark.parametrize("options, rotated", [(dict(min_area=60, specks="merge"), False), (dict(simplify=3.0), False),
                                              (dict(min_area=60, specks="merge"), True)])
def test_merged_specks_and_simplified_polygons_do_not_depend_on_the_block(make_mask, tmp_path, options, rotated):
    """Polygons within one block came first and those joined across block borders kept their seams' vertices, and
    merging specks and simplifying depend on both: 0.15% of the area changed class at --simplify 1 between
    blocks of 512 and one block. On a rotated grid the seams are straight only to a rounding (simplifying there
    still moves a few pixels' area between blocks: left)."""
    transform = Affine.translation(400000, 6000000) * Affine.rotation(30) * Affine.scale(2, -2) if rotated else None
    path = make_mask(noisy_mask((96, 96), seed=5, smooth=2), transform=transform)
    layers = {}
    for block in (96, 16, 7):
        vectorize(path, tmp_path / f"b{block}.gpkg", block=block, **options)
        layers[block] = gpd.read_file(tmp_path / f"b{block}.gpkg")
    one = layers[96]
    assert 20 < len(one) and one.geometry.is_valid.all()
    def polygons(frame):  # in any order; on a rotated grid, where vertices differ in their last bits, by area
        if rotated:
            return sorted(zip(frame.class_id, frame.area_m2.round(3)))
        return sorted(zip(frame.class_id, (g.normalize().wkb for g in frame.geometry), frame.area_m2.round(6)))

    for block in (16, 7):
        assert polygons(layers[block]) == polygons(one)
        assert list(layers[block].class_id) == list(one.class_id)  # and in one order
        moved = sum(shapely.union_all(layers[block].geometry[layers[block].class_id == c].values).symmetric_difference(
            shapely.union_all(one.geometry[one.class_id == c].values)).area for c in set(one.class_id))
        assert moved < 1e-9 * one.geometry.area.sum()


def test_polygons_reprojected_across_the_antimeridian_are_named(make_mask, tmp_path, caplog):
    """In longitude and latitude a polygon across 180 degrees, unsplit, spans the globe (a 101 km² lake covered
    226,361 km²): say so, and how to split them."""
    data = np.zeros((20, 40), np.uint8)
    data[5:15, 10:30] = 1  # a lake across the line, x = 0 here
    path = make_mask(data, crs="+proj=eqc +lon_0=180 +datum=WGS84", transform=from_origin(-20000, 10000, 1000, 1000))
    vectorize(path, tmp_path / "ok.gpkg")
    assert "antimeridian" not in caplog.text
    vectorize(path, tmp_path / "lonlat.gpkg", to_crs="EPSG:4326")
    assert "lonlat.gpkg: 2 polygon(s) cross the antimeridian (180 degrees), which EPSG:4326 does not split" in caplog.text
    assert "ogr2ogr -wrapdateline" in caplog.text
    caplog.clear()  # a global mask's polygons are that wide already: nothing to split
    world = make_mask(np.zeros((18, 36), np.uint8), crs="EPSG:4326", transform=from_origin(-180, 90, 10, 10),
                      name="world.tif")
    for crs in ("EPSG:4326", "OGC:CRS84"):
        vectorize(world, tmp_path / "world.gpkg", to_crs=crs, overwrite=True)
    assert "antimeridian" not in caplog.text


def test_a_lonlat_mask_past_180_into_web_mercator_is_named(make_mask, tmp_path, caplog):
    """A mask in longitude and latitude written past 180 (179.9 to 180.1), as the README's Limits describe, into
    Web Mercator: its polygons across the line came out 40,000 km wide without a word (only geographic targets were
    checked); into UTM zone 1, centred on the line, they are right and nothing is said."""
    data = np.zeros((100, 200), np.uint8)
    data[40:60, 50:150] = 1  # 179.95 to 180.05
    path = make_mask(data, crs="EPSG:4326", transform=from_origin(179.9, -16.0, 0.001, 0.001))
    vectorize(path, tmp_path / "utm.gpkg", to_crs="EPSG:32601")
    vectorize(path, tmp_path / "plain.gpkg")
    assert "antimeridian" not in caplog.text
    vectorize(path, tmp_path / "mercator.gpkg", to_crs="EPSG:3857")
    assert "mercator.gpkg: 2 polygon(s) cross the antimeridian (180 degrees), which EPSG:3857 does not split" \
        in caplog.text
    caplog.clear()  # a mask away from the line: nothing to say
    elsewhere = make_mask(data, crs="EPSG:4326", transform=from_origin(55.0, 25.0, 0.001, 0.001), name="dubai.tif")
    vectorize(elsewhere, tmp_path / "dubai.gpkg", to_crs="EPSG:3857")
    assert "antimeridian" not in caplog.text


def test_a_wide_strip_near_the_pole_is_not_taken_for_a_crossing_of_the_antimeridian(make_mask, tmp_path, caplog):
    """A lon/lat strip at 89.5-89.8 N over 0-60 E is 6,700 km wide and 150 km round in EPSG:4087 (or 3857): the
    width-to-perimeter rule alone warned that it crossed 180 degrees, 120 degrees away. A UTM zone 1 mask across the
    line into Web Mercator is still named."""
    data = np.ones((30, 60), np.uint8)
    polar = make_mask(data, crs="EPSG:4326", transform=from_origin(0, 89.8, 1.0, 0.01), name="polar.tif")
    for crs in ("EPSG:4087", "EPSG:3857"):
        vectorize(polar, tmp_path / f"polar_{crs[5:]}.gpkg", to_crs=crs)
    assert "antimeridian" not in caplog.text
    square = np.zeros((100, 100), np.uint8)
    square[40:60, 40:60] = 1
    # UTM zone 1 (central meridian -177): the square, x = 178,000 to 180,000 m at 16.0 S, is 179.991 E to 179.99 W
    across = make_mask(square, crs="EPSG:32701", transform=from_origin(174000.0, 8230000.0, 100.0, 100.0),
                       name="utm1.tif")
    vectorize(across, tmp_path / "utm1.gpkg", to_crs="EPSG:3857")
    assert "utm1.gpkg: 2 polygon(s) cross the antimeridian" in caplog.text, caplog.text  # the square, its ground


def test_a_class_names_tag_of_another_form_is_read_or_named(make_mask, tmp_path, caplog):
    """Another tool's CLASS_NAMES tag holding a JSON list was a ValueError traceback."""
    data = np.arange(16, dtype=np.uint8).reshape(4, 4) % 2
    path = make_mask(data)
    for tag, classes in (('["sea", "land"]', {"sea", "land"}), ("not json", {"class 0", "class 1"}),
                         ('{"a": 1}', {"class 0", "class 1"})):
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(CLASS_NAMES=tag)
        vectorize(path, tmp_path / "v.gpkg", overwrite=True)
        assert set(gpd.read_file(tmp_path / "v.gpkg").class_name) == classes
    assert "CLASS_NAMES tag is not geoseg's" in caplog.text


def test_geopackages_keep_their_spatial_index_once_tensorflow_is_loaded(make_mask, tmp_path):
    """TensorFlow exports a SQLite without R*Tree; a GDAL loaded after it wrote GeoPackages without
    a spatial index. A fresh interpreter, as the `geoseg` command is: geoseg, then Keras, then a layer."""
    import sqlite3
    import subprocess
    import sys

    mask = make_mask(np.arange(64, dtype=np.uint8).reshape(8, 8) % 3)
    out = tmp_path / "layer.gpkg"
    code = f"import geoseg, keras; geoseg.vectorize({str(mask)!r}, {str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    with sqlite3.connect(out) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'rtree_%'")}
    assert "rtree_layer_geom" in tables


@pytest.mark.parametrize("where", ["writer", "stream", "in memory"])
def test_an_interrupted_write_leaves_no_temporary_layer(make_mask, tmp_path, monkeypatch, where):
    """Ctrl-C while the layer was written left a hidden .NAME.tmp.gpkg (55 MB on a large mask) behind. The layer
    is written while the blocks are polygonised ("stream"), or at once when specks merge ("in memory")."""
    import pyogrio

    import geoseg.vector

    mask = make_mask(noisy_mask((40, 50), smooth=4))
    blocks = []
    polygonize = geoseg.vector.polygonize_block

    def interrupted(path):
        path.write_bytes(b"half a layer")
        raise KeyboardInterrupt

    def block_then_interrupted(*args, **kwargs):
        blocks.append(args[1])
        if len(blocks) == 3:
            raise KeyboardInterrupt
        return polygonize(*args, **kwargs)

    if where == "writer":
        monkeypatch.setattr(pyogrio, "write_arrow", lambda reader, path, **kwargs: interrupted(path))
    elif where == "stream":
        monkeypatch.setattr(geoseg.vector, "polygonize_block", block_then_interrupted)
        monkeypatch.setattr(geoseg.vector, "STREAM_BATCH", 1)  # the first blocks are in the file when it comes
    else:
        monkeypatch.setattr(gpd.GeoDataFrame, "to_file", lambda self, path, **kwargs: interrupted(path))
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        vectorize(mask, tmp_path / "out" / "v.gpkg", block=16,
                  **({"min_area": 2, "specks": "merge"} if where == "in memory" else {}))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_block_that_cannot_be_read_while_streaming_is_its_own_error(make_mask, tmp_path, monkeypatch):
    """An error of the stream's (reading a block) reaches the caller as itself, not as Arrow's error or as
    "could not be written ... free some disk space"; the blocks already written leave nothing behind."""
    import geoseg.vector
    from geoseg.errors import RasterReadError

    mask = make_mask(noisy_mask((40, 50), smooth=4))
    polygonize, calls = geoseg.vector.polygonize_block, []

    def unreadable(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RasterReadError(f"{args[0]}: block 4 is unreadable")
        return polygonize(*args, **kwargs)

    monkeypatch.setattr(geoseg.vector, "polygonize_block", unreadable)
    monkeypatch.setattr(geoseg.vector, "STREAM_BATCH", 1)
    (tmp_path / "out").mkdir()
    with pytest.raises(RasterReadError, match="block 4 is unreadable"):
        vectorize(mask, tmp_path / "out" / "v.gpkg", block=16)
    assert list((tmp_path / "out").iterdir()) == []


def test_min_area_without_a_crs_says_it_counts_pixels(make_mask, tmp_path, caplog):
    mask = make_mask(noisy_mask((40, 50), smooth=2), crs=None, transform=rasterio.Affine.identity())
    vectorize(mask, tmp_path / "v.gpkg", min_area=5)
    assert "has no CRS, so --min-area (min_area=) 5 counts pixels, not m²" in caplog.text


def test_a_layer_named_as_its_mask_keeps_the_masks_style(make_mask, tmp_path, caplog):
    """vectorize mask.tif -o mask.gpkg wrote its categorised style over mask.qml, the raster's palette."""
    from geoseg.vector import write_qml

    path = make_mask(noisy_mask((30, 30)))
    write_qml(path.with_suffix(".qml"), {0: ("a", (1, 2, 3))}, kind="raster")
    raster_style = path.with_suffix(".qml").read_text()
    vectorize(path, path.with_suffix(".gpkg"))
    assert path.with_suffix(".qml").read_text() == raster_style
    assert "so the polygons' style was not written over it" in caplog.text and "_polygons.gpkg" in caplog.text
    vectorize(path, tmp_path / "other.gpkg")
    assert "<renderer-v2" in (tmp_path / "other.qml").read_text()


def test_a_folder_where_the_style_goes_is_refused_before_the_layer_is_written(make_mask, tmp_path):
    """It was an IsADirectoryError traceback after the layer was written."""
    path = make_mask(noisy_mask((30, 30)))
    (tmp_path / "v.qml").mkdir()
    with pytest.raises(OutputError, match=r"v.qml: is a folder, where this run writes a file"):
        vectorize(path, tmp_path / "v.gpkg")
    assert not (tmp_path / "v.gpkg").exists()
    vectorize(path, tmp_path / "v.gpkg", style=False)  # no style, no folder in the way
    assert (tmp_path / "v.gpkg").exists()


def _tiled_like(mask, name, data, **changes):
    """A tiled, uncompressed copy of `mask`'s profile holding `data`, so that cutting it loses whole blocks."""
    with rasterio.open(mask) as src:
        profile = {**src.profile, "tiled": True, "blockxsize": 16, "blockysize": 16, "compress": None, **changes}
    path = mask.with_name(name)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return path


@pytest.mark.parametrize("damaged", ["mask", "confidence"])
def test_a_truncated_mask_or_confidence_is_a_read_error(make_mask, tmp_path, damaged):
    """Was rasterio's RasterioIOError "Read failed" as a traceback, from a Dask task."""
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.errors import RasterReadError

    data = noisy_mask((64, 80))
    mask = _tiled_like(make_mask(data), "tiled_mask.tif", data)
    conf = _tiled_like(mask, "tiled_confidence.tif", np.full((64, 80), 70, np.uint8))
    cut = mask if damaged == "mask" else conf
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    with rasterio.open(cut) as ds:  # the header opens; the pixels fail
        with pytest.raises(rasterio.errors.RasterioIOError):
            ds.read()
    with pytest.raises(RasterReadError, match=rf"{cut.name}: cannot read rows \d+-\d+, cols \d+-\d+ \(.*\); the file "
                                              r"may be truncated or damaged\. Check it with gdalinfo -checksum"):
        vectorize(mask, tmp_path / "v.gpkg", confidence=conf, block=32)
    assert not (tmp_path / "v.gpkg").exists()
    result = CliRunner().invoke(main, ["vectorize", str(mask), "-o", str(tmp_path / "v.gpkg"), "--confidence", str(conf)],
                                catch_exceptions=False)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {cut}: cannot read rows ")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("changes, match", [
    # the RGB input beside the mask: band 1 was averaged as 'confidence'
    ({"count": 3}, r"it has 3 uint8 band\(s\) where a confidence raster has 1 uint8 band"),
    ({"dtype": "float32"}, r"it has 1 float32 band\(s\) where a confidence raster has 1 uint8 band"),  # probabilities as fractions, from elsewhere
    ({"transform": from_origin(400010.0, 6000000.0, 2.0, 2.0)},  # 5 pixels east
     r"its transform \(2, 0, 400010, 0, -2, 6000000\) differs from the mask's \(2, 0, 400000, 0, -2, 6000000\)"),
    ({"crs": "EPSG:32634"}, r"its CRS \(EPSG:32634\) differs from the mask's \(EPSG:32633\)"),  # another UTM zone
    ({"transform": from_origin(400000.0 + 1e-9, 6000000.0, 2.0, 2.0)}, None),  # float noise: accepted
    ({"nodata": 255}, None),  # as segment --confidence writes it: one uint8 band, 255 = nodata
])
def test_confidence_must_be_one_uint8_band_on_the_masks_grid(make_mask, tmp_path, changes, match):
    mask = make_mask(noisy_mask((40, 50)), name="scene_mask.tif")
    with rasterio.open(mask) as src:
        profile = {**src.profile, **changes}
    conf = tmp_path / "other.tif"
    with rasterio.open(conf, "w", **profile) as ds:
        ds.write(np.full((profile["count"], 40, 50), 70, profile["dtype"]))
    if match is None:
        vectorize(mask, tmp_path / "v.gpkg", confidence=conf)
        assert (gpd.read_file(tmp_path / "v.gpkg").confidence == 70).all()
        return
    with pytest.raises(InputError, match=rf"other\.tif: not a confidence raster of the mask .*scene_mask\.tif: {match}\. "
                                         r"Pass the confidence raster written with this mask by `geoseg segment "
                                         r"--confidence` \(e\.g\. .*scene_confidence\.tif\)"):
        vectorize(mask, tmp_path / "v.gpkg", confidence=conf)
    assert not (tmp_path / "v.gpkg").exists()


def test_a_layer_keeps_its_style_when_another_of_its_name_is_written(make_mask, tmp_path, caplog):
    """vectorize flood.tif -o result.geojson, then landcover.tif -o result.gpkg: result.qml was written over
    without a word, so result.geojson opened in QGIS with land-cover names on flood classes."""
    first = make_mask(noisy_mask((40, 50)), name="first.tif", names=("dry", "flooded", "permanent water"))
    second = make_mask(noisy_mask((40, 50), seed=1), name="second.tif", names=("building", "land", "road"))
    (tmp_path / "out").mkdir()
    vectorize(first, tmp_path / "out" / "result.geojson")
    style = (tmp_path / "out" / "result.qml").read_text()
    assert 'label="flooded"' in style
    with caplog.at_level("WARNING", logger="geoseg.vector"):
        vectorize(second, tmp_path / "out" / "result.gpkg")
    assert (tmp_path / "out" / "result.qml").read_text() == style
    assert "result.qml is the style of the layer " in caplog.text and "result.geojson, whose classes differ" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geoseg.vector"):  # the same classes: the same style, said nothing
        vectorize(first, tmp_path / "out" / "result.fgb")
        vectorize(second, tmp_path / "alone.gpkg")
        vectorize(first, tmp_path / "alone.gpkg", overwrite=True)  # its own style, replaced
    assert caplog.text == "" and 'label="flooded"' in (tmp_path / "alone.qml").read_text()
    # a style of the same classes in older colours is taken over: the earlier palette stayed, with a warning that
    # the classes differed (review, h75)
    stale = (tmp_path / "out" / "result.qml").read_text().replace('value="255,0,0,255"', 'value="226,169,41,255"')
    (tmp_path / "out" / "result.qml").write_text(stale)
    (tmp_path / "out" / "result.fgb").unlink()
    with caplog.at_level("WARNING", logger="geoseg.vector"):
        vectorize(first, tmp_path / "out" / "result.fgb")
    assert caplog.text == "" and (tmp_path / "out" / "result.qml").read_text() == style


def test_a_class_mask_is_no_confidence_raster(make_mask, tmp_path):
    """`--confidence` given the mask itself (or another mask) averaged class ids as a confidence of 0-2 %."""
    import shutil

    mask = make_mask(noisy_mask((40, 50)), name="scene_mask.tif")
    with pytest.raises(InputError, match=r"scene_mask\.tif: not a confidence raster of the mask .*scene_mask\.tif: it "
                                         r"is the mask itself\. Pass the confidence raster"):
        vectorize(mask, tmp_path / "v.gpkg", confidence=mask)
    shutil.copy(mask, tmp_path / "other_mask.tif")
    with pytest.raises(InputError, match=r"other_mask\.tif: not a confidence raster of the mask .*: it is a class mask "
                                         r"\(it has class names\), not percentages\. Pass"):
        vectorize(mask, tmp_path / "v.gpkg", confidence=tmp_path / "other_mask.tif")
    assert not (tmp_path / "v.gpkg").exists()


def test_web_mercator_areas_are_the_grounds_not_the_maps(tmp_path):
    """EPSG:3857 areas were planar: at 38° latitude 1.61 times the ground (SpaceNet 7's clips, web tiles).
    UTM stays planar: its areal scale is within 0.15% of 1 in its zone."""
    from pyproj import Geod, Transformer
    from rasterio.transform import from_origin

    from geoseg.raster import inspect_raster, pixel_areas_m2
    from geoseg.vector import vectorize

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-77.0, 38.0)
    path = tmp_path / "mercator_mask.tif"
    mask = np.zeros((100, 100), np.uint8)
    mask[:, 50:] = 1
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:3857", transform=from_origin(x, y, 10, 10)) as ds:
        ds.write(mask, 1)
    lons, lats = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        [x, x + 1000, x + 1000, x], [y, y, y - 1000, y - 1000])
    ground = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])  # about 1e6 / 1.61 m²
    assert ground == pytest.approx(1e6 / 1.61, rel=0.01)
    assert pixel_areas_m2(inspect_raster(path)).sum() * 100 == pytest.approx(ground, rel=1e-3)
    frame = gpd.read_file(vectorize(path, tmp_path / "mercator.gpkg").path)
    assert frame["area_m2"].sum() == pytest.approx(ground, rel=1e-3)
    assert frame.crs == "EPSG:3857"  # measured on the ground, kept in the raster's CRS
    utm = tmp_path / "utm_mask.tif"
    with rasterio.open(utm, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:32640", transform=from_origin(500000, 2800000, 10, 10)) as ds:
        ds.write(mask, 1)
    assert pixel_areas_m2(inspect_raster(utm)).tolist() == [100.0] * 100


def test_geojson_of_a_mask_without_crs_warns_that_it_reads_as_degrees(tmp_path, caplog):
    """Pixel coordinates in a GeoJSON, which has no CRS but WGS84: read back at latitude -544, without a word."""
    path = tmp_path / "plain_mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=10, count=1, dtype="uint8", nodata=255) as ds:
        ds.write(np.ones((1, 10, 20), np.uint8))
    with caplog.at_level("WARNING", logger="geoseg"):
        vectorize(path, tmp_path / "plain.gpkg")
    assert "GeoJSON" not in caplog.text
    with caplog.at_level("WARNING", logger="geoseg"):
        vectorize(path, tmp_path / "plain.geojson")
    assert "holds pixel coordinates, which GIS software reads as longitude and latitude" in caplog.text


def test_a_foreign_mask_s_own_nodata_is_honoured_and_255_without_one_is_warned_about(tmp_path, caplog):
    """A label raster of nodata 0 gave polygons of 'class 0'; a road mask of 0 and 255 without a nodata
    value gave only the background's polygons, without a word."""
    data = np.zeros((20, 20), np.uint8)
    data[5:10, 5:10] = 1
    data[12:18, 12:18] = 255
    paths = {}
    for nodata in (0, None):
        paths[nodata] = tmp_path / f"labels_{nodata}.tif"
        with rasterio.open(paths[nodata], "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(400000.0, 6000000.0, 2.0, 2.0), nodata=nodata) as ds:
            ds.write(data, 1)
    vectorize(paths[0], tmp_path / "a.gpkg")
    assert sorted(gpd.read_file(tmp_path / "a.gpkg").class_id.unique()) == [1, 255]  # 255 is a class there
    with caplog.at_level("WARNING", logger="geoseg.vector"):
        vectorize(paths[None], tmp_path / "b.gpkg")
    assert sorted(gpd.read_file(tmp_path / "b.gpkg").class_id.unique()) == [0, 1]
    assert any("declares no nodata value, so its pixels of value 255 are taken as nodata" in r.getMessage()
               for r in caplog.records)


def test_no_stray_rasterio_warning_from_the_threads_that_polygonise(make_mask, tmp_path):
    """rasterio's shapes() warns "Dataset has no geotransform" of its in-memory raster; a catch_warnings()
    around it is not thread-safe, and 3 runs in 10 printed the warning on a georeferenced mask."""
    import subprocess
    import sys

    path = make_mask(np.random.default_rng(0).integers(0, 3, (256, 256)).astype(np.uint8))
    code = ("import sys, warnings, rasterio.errors; "  # -W cannot name rasterio's category: it was ignored
            "warnings.simplefilter('always', rasterio.errors.NotGeoreferencedWarning); "
            "from geoseg.vector import vectorize, polygonize_block; from rasterio.windows import Window; "
            # the first block, in this thread alone: its transform, the identity, warned too (hidden by the race)
            "polygonize_block(sys.argv[1], Window(0, 0, 16, 16), (False,) * 4, None, None); "
            "[vectorize(sys.argv[1], sys.argv[2], block=16, overwrite=True) for _ in range(3)]")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "p.fgb")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "NotGeoreferencedWarning" not in run.stderr, run.stderr[-2000:]


def test_class_areas_in_a_polar_projection_are_measured_per_pixel(make_mask, tmp_path):
    """Each row's pixel area at its middle column misstated class areas by 2-4% on 10 km polar grids, where the
    scale changes along a row; zones and the mask's class table now agree with a pixel-by-pixel geodesic sum."""
    from pyproj import Geod, Transformer

    from geoseg.raster import class_pixels_and_areas, inspect_raster
    from geoseg.vector import zonal_composition

    data = np.ones((100, 100), np.uint8)
    data[:, :30] = 0  # the west third one class: its pixels are larger or smaller than the row's middle one
    transform = from_origin(-2000000.0, 2000000.0, 40000.0, 40000.0)
    path = make_mask(data, crs="EPSG:3413", transform=transform)
    to_lonlat, geod = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True), Geod(ellps="WGS84")
    truth = np.zeros(2)
    for r in range(100):
        for c in range(100):
            lon, lat = to_lonlat.transform(*zip(*(transform * (c + dc, r + dr) for dc, dr in
                                                  ((0, 0), (1, 0), (1, 1), (0, 1)))))
            truth[data[r, c]] += abs(geod.polygon_area_perimeter(lon, lat)[0])
    pixels, areas = class_pixels_and_areas(path, inspect_raster(path), 3)
    assert list(pixels) == [3000, 7000, 0]
    assert areas[:2] == pytest.approx(truth, rel=2e-4)
    frame = gpd.GeoDataFrame(geometry=[shapely.box(-2000000, -2000000, 2000000, 2000000)], crs="EPSG:3413")
    zone_pixels, zone_areas = zonal_composition(path, frame, 3, block=32)
    assert list(zone_pixels[0]) == [3000, 7000, 0] and zone_areas[0, :2] == pytest.approx(truth, rel=2e-4)
    # one row of the same grid (no rows to tell apart: it took the middle column's area, 1% off)
    strip = make_mask(data[:1], crs="EPSG:3413", transform=transform, name="strip.tif")
    one_row = np.zeros(2)
    for c in range(100):
        lon, lat = to_lonlat.transform(*zip(*(transform * (c + dc, dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1)))))
        one_row[data[0, c]] += abs(geod.polygon_area_perimeter(lon, lat)[0])
    assert class_pixels_and_areas(strip, inspect_raster(strip), 3)[1][:2] == pytest.approx(one_row, rel=2e-4)


def test_styles_are_valid_xml_and_cover_every_class_of_a_mask_from_elsewhere(make_mask, tmp_path):
    """A class named "sand & gravel" made styles QGIS could not parse; a label raster without a colour table got
    a style of no category (QGIS drew nothing), and one whose class 0 is black left class 0 out of it."""
    import xml.etree.ElementTree as ET

    def categories(qml):
        root = ET.parse(qml).getroot()
        found = root.iter("category") if root.find(".//categories") is not None else root.iter("paletteEntry")
        return {int(e.get("value")): e.get("label") for e in found}

    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:15], mask[12:18, 2:8] = 1, 2
    named = make_mask(mask, names=("sand & gravel", 'water <deep>', 'the "rest"'))
    vectorize(named, tmp_path / "named.gpkg")
    assert categories(tmp_path / "named.qml") == {0: "sand & gravel", 1: "water <deep>", 2: 'the "rest"'}
    from geoseg.vector import write_qml

    write_qml(tmp_path / "r.qml", {0: ("a & b", (1, 2, 3))}, kind="raster")
    assert categories(tmp_path / "r.qml") == {0: "a & b"}
    for table in (None, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 0, 255, 255)}):
        path = tmp_path / f"label_{table is None}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(400000.0, 6000000.0, 2.0, 2.0)) as ds:
            ds.write(mask, 1)
            if table:
                ds.write_colormap(1, table)
        result = vectorize(path, path.with_suffix(".gpkg"))
        assert categories(path.with_suffix(".qml")) == {0: "class 0", 1: "class 1", 2: "class 2"}
        assert vectorize(path, tmp_path / "kept.gpkg", keep=["class 1"], overwrite=True).per_class == {"class 1": 1}
        assert result.per_class == {"class 0": 1, "class 1": 1, "class 2": 1}
        layer = gpd.read_file(path.with_suffix(".gpkg"))
        assert sorted(set(layer["class_name"])) == ["class 0", "class 1", "class 2"]


@pytest.mark.parametrize("south_up, specks", [(False, "drop"), (True, "drop"), (False, "merge")])
def test_polygons_have_anticlockwise_exteriors_and_clockwise_holes(make_mask, tmp_path, south_up, specks):
    """RFC 7946 asks for anticlockwise exterior rings: a south-up mask gave none, merged specks reversed 59%."""
    mask = noisy_mask((60, 60), seed=2)
    transform = Affine(2.0, 0, 400000.0, 0, 2.0, 6000000.0) if south_up else None
    path = make_mask(mask, transform=transform)
    vectorize(path, tmp_path / "p.geojson", to_crs="EPSG:4326", min_area=20, specks=specks)
    geoms = gpd.read_file(tmp_path / "p.geojson").geometry.values
    assert len(geoms) > 10
    assert shapely.is_ccw(shapely.get_exterior_ring(geoms)).all()
    holes = [ring for g in geoms for ring in g.interiors]
    assert holes and not any(shapely.is_ccw(ring) for ring in holes)


@pytest.mark.parametrize("crs, transform", [("EPSG:32633", None), ("EPSG:4326", from_origin(10.0, 60.0, 1e-3, 1e-3))])
def test_the_layer_written_block_by_block_equals_the_one_written_at_once(make_mask, tmp_path, monkeypatch, crs,
                                                                        transform):
    """GeoPackage, GeoJSON and FlatGeobuf are written while the blocks are polygonised, a few blocks per batch
    (only GeoParquet, merged specks and a simplified coverage wait for all polygons): same polygons, same
    measures, same classes and confidence, whatever the batches."""
    import geoseg.vector

    data = noisy_mask((70, 90), smooth=2)
    mask = make_mask(data, crs=crs, transform=transform)
    conf = make_mask(np.where(data == 255, 255, (np.arange(data.size).reshape(data.shape) % 101)).astype(np.uint8),
                     crs=crs, transform=transform, name="conf.tif", names=None)
    monkeypatch.setattr(geoseg.vector, "STREAM_BATCH", 7)
    streamed = vectorize(mask, tmp_path / "v.gpkg", block=16, confidence=conf, min_area=1e-9)
    at_once = vectorize(mask, tmp_path / "v.parquet", block=16, confidence=conf, min_area=1e-9)
    a, b = gpd.read_file(tmp_path / "v.gpkg"), gpd.read_parquet(tmp_path / "v.parquet")
    assert streamed.polygons == at_once.polygons == len(a) == len(b) > 50
    assert streamed.per_class == at_once.per_class and a.crs == b.crs
    columns = ["class_id", "class_name", "confidence", "area_m2", "perimeter_m"]
    assert list(a.columns) == columns + ["geometry"]
    key = lambda f: f.assign(wkb=shapely.to_wkb(shapely.normalize(f.geometry.values))).sort_values("wkb")  # noqa: E731
    a, b = key(a), key(b)
    assert list(a["wkb"]) == list(b["wkb"])
    for column in columns:
        assert np.array_equal(a[column].to_numpy(), b[column].to_numpy()), column


def test_no_module_is_first_imported_in_the_block_threads(make_mask, tmp_path):
    """A Ctrl-C during a process's first vectorize, while the block threads imported scipy and pyproj, left a
    notebook's next call hung on the import lock for ever, or failing with "partially initialized module"."""
    import subprocess
    import sys

    mask = make_mask(noisy_mask((96, 96)))
    code = ("import sys, threading\n"
            "from geoseg.vector import vectorize\n"
            "seen = []\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if threading.current_thread() is not threading.main_thread(): seen.append(name)\n"
            "sys.meta_path.insert(0, Spy())\n"
            "vectorize(sys.argv[1], sys.argv[2], block=32, specks='merge', min_area=1, simplify=0.5)\n"
            "print(sorted(set(seen)))\n")
    done = subprocess.run([sys.executable, "-c", code, str(mask), str(tmp_path / "p.gpkg")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ctrl_c_while_the_layer_is_written_is_a_keyboard_interrupt(make_mask, tmp_path, monkeypatch):
    """A Ctrl-C while Arrow pulled a batch came out of pyogrio as "RuntimeError: Error while accessing batch from
    stream", which a notebook's `except KeyboardInterrupt` does not catch."""
    import signal

    import pyogrio

    def interrupted(reader, path, **kwargs):  # as Arrow does when the signal lands in its own loop
        reader.read_next_batch()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise RuntimeError("Error while accessing batch from stream.") from None

    monkeypatch.setattr(pyogrio, "write_arrow", interrupted)
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.default_int_handler if signum == signal.SIGINT
                        else signal.SIG_DFL)  # as in a notebook, whatever handler pytest runs under
    try:
        with pytest.raises(KeyboardInterrupt):
            vectorize(make_mask(noisy_mask((64, 64))), tmp_path / "p.gpkg", block=32)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]


@pytest.mark.parametrize("stem", ["-roofs", "gpkg_site", "(a)", "x" * 235])
def test_polygons_of_names_geopackage_refuses_are_written(make_mask, tmp_path, stem):
    """A layer name starting with punctuation or 'gpkg' was refused by GDAL ("may not contain special characters"),
    and a name of 235 bytes passed the 255-byte check while its SQLite journal's did not; both ended in advice to
    free disk space."""
    import pyogrio

    mask = make_mask(np.zeros((20, 30), np.uint8))
    out = tmp_path / f"{stem}.gpkg"
    vectorize(mask, out)
    assert len(pyogrio.read_dataframe(out)) == 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_geopackage_path_with_a_semicolon_is_refused_before_writing(make_mask, tmp_path):
    """GDAL's vector drivers cut a path at ';': 'site;A.gpkg' was written as a hidden '.site', and reported missing."""
    mask = make_mask(np.zeros((20, 30), np.uint8))
    for name in ("site;A.gpkg", "site;A.geojson"):
        with pytest.raises(OutputError, match=f"{name}: GDAL cannot write a vector file whose path holds ';'"):
            vectorize(mask, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]
    vectorize(mask, tmp_path / "site;A.parquet")  # written by Arrow, which takes it


@pytest.mark.parametrize("specks", ["drop", "merge"])
def test_min_area_holds_for_the_simplified_polygons(make_mask, tmp_path, specks):
    """Specks were dropped or merged by their areas before simplifying, which moves area between neighbours, and
    min_area was not applied again: --min-area 5000 --simplify 40 wrote 34 polygons of 260 under 5000 m² (the
    smallest 2700). Those now go as the specks went; merged ones keep the coverage whole."""
    data = noisy_mask((120, 120), seed=3, smooth=2)
    data[data == 255] = 0  # a full coverage: every polygon has a neighbour to merge into
    path = make_mask(data)
    vectorize(path, tmp_path / "v.gpkg", min_area=60, simplify=4.0, specks=specks, block=40)
    frame = gpd.read_file(tmp_path / "v.gpkg")
    assert len(frame) > 50 and frame.geometry.is_valid.all()
    assert frame.area_m2.min() >= 60
    assert frame.area_m2.to_numpy() == pytest.approx(frame.geometry.area.to_numpy())  # measured once merged
    union = shapely.union_all(frame.geometry.values).area
    assert union == pytest.approx(frame.geometry.area.sum(), rel=1e-9)  # no overlaps
    if specks == "merge":
        assert union == pytest.approx(120 * 120 * 4.0, rel=1e-9)  # no gaps: still covers the raster


def test_merged_specks_cut_off_by_nodata_stay_after_simplifying(make_mask, tmp_path):
    """A speck with no neighbour (nodata all round) has nothing to merge into, before or after simplifying: it
    stays, and the rest hold min_area (6 more were under it)."""
    data = noisy_mask((120, 120), seed=3, smooth=2)
    data[data == 255] = 0
    data[100:120, 100:120] = 255
    data[108:110, 108:110] = 1  # a 16 m² speck in nodata
    path = make_mask(data)
    vectorize(path, tmp_path / "v.gpkg", min_area=60, simplify=4.0, specks="merge", block=40)
    frame = gpd.read_file(tmp_path / "v.gpkg")
    small = frame[frame.area_m2 < 60]
    assert len(small) == 1 and small.geometry.iloc[0].bounds == pytest.approx((400216, 5999780, 400220, 5999784))
    assert small.class_name.iloc[0] == "b"  # simplified to a triangle of 8 m²


def test_the_style_of_a_layer_of_some_classes_lists_only_those(make_mask, tmp_path):
    """vectorize --classes water wrote a style of every class of the mask: QGIS's legend listed classes the
    layer does not hold."""
    import xml.etree.ElementTree as ET

    data = np.zeros((20, 20), np.uint8)
    data[5:10, 5:15], data[12:18, 2:8] = 1, 2
    path = make_mask(data)
    for keep, expected in ((["b"], {1: "b"}), ([2, "a"], {0: "a", 2: "c"}), (None, {0: "a", 1: "b", 2: "c"})):
        vectorize(path, tmp_path / "v.gpkg", keep=keep, overwrite=True)
        root = ET.parse(tmp_path / "v.qml").getroot()
        assert {int(c.get("value")): c.get("label") for c in root.iter("category")} == expected
        assert {int(s.get("name")) for s in root.iter("symbol")} == set(expected)


def test_simplify_tolerance_is_ground_metres_in_web_mercator(make_mask, tmp_path):
    """--simplify took Web Mercator's map metres for metres: at 60 degrees north 100 m simplified as 50 m on the
    ground. The same mask in UTM with 2 m pixels and in EPSG:3857 with pixels of 2 m on the ground (4 map
    units) now simplify alike."""
    from pyproj import Geod, Transformer

    data = noisy_mask((80, 80), seed=7, smooth=3)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10.0, 60.0)  # the centre
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform([x, x + 1], [y, y])
    side = 2.0 / Geod(ellps="WGS84").inv(lon[0], lat[0], lon[1], lat[1])[2]  # 2 m on the ellipsoid: 4 map units
    x, y = x - 40 * side, y + 40 * side
    layers = {}
    for crs, transform in (("EPSG:32633", None), ("EPSG:3857", from_origin(x, y, side, side))):
        path = make_mask(data, crs=crs, transform=transform, name=f"{crs[5:]}.tif")
        vectorize(path, tmp_path / f"{crs[5:]}.gpkg", simplify=3.0)
        layers[crs] = gpd.read_file(tmp_path / f"{crs[5:]}.gpkg")
    vertices = {crs: shapely.get_num_coordinates(frame.geometry.values).sum() for crs, frame in layers.items()}
    # alike, not equal: vertices of equal effective area go in an order the last bits of their coordinates set
    assert vertices["EPSG:3857"] == pytest.approx(vertices["EPSG:32633"], rel=0.01)  # was 1352 against 904


def test_specks_of_a_class_kept_alone_merge_into_neighbours_of_any_class(make_mask, tmp_path):
    """--classes b --min-area 100 --specks merge kept every small pond: polygonised alone, class b had no
    neighbour for them to go to, where --specks drop wrote the lake alone (h106)."""
    data = np.zeros((40, 40), np.uint8)
    data[20:40, 20:40] = 1  # a lake of 400 px (1600 m²)
    data[2, 2] = data[5:7, 10:12] = 1  # ponds of 4 m² and 16 m²
    data[30, 5] = 2  # a speck of another class, not kept
    path = make_mask(data)
    for specks in ("drop", "merge"):
        result = vectorize(path, tmp_path / f"{specks}.gpkg", keep=["b"], min_area=100, specks=specks)
        frame = gpd.read_file(tmp_path / f"{specks}.gpkg")
        assert list(frame.class_name) == ["b"] and frame.area_m2.tolist() == [1600.0], specks
        assert result.per_class == {"b": 1}
    assert (tmp_path / "merge.qml").read_text().count("<category ") == 1


def test_two_writers_of_one_output_get_temporary_files_of_their_own(tmp_path):
    """`replaced_atomically` wrote to one fixed `.NAME.tmp.gpkg` and removed it first: two `geoseg vectorize`
    runs into one path at once both failed ("attempt to write a readonly database"), or the GeoJSON one that
    failed removed the file the other had just reported written. A killed process's file is removed."""
    import os
    import socket
    import subprocess

    from geoseg.files import replaced_atomically

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname().replace("-", "_").replace(".", "_")
    stale = tmp_path / f".layer.geoseg-{host}-{gone.pid}-abcdef.tmp.gpkg"
    stale.write_bytes(b"half")
    alive = tmp_path / f".layer.geoseg-{host}-{os.getppid()}-abcdef.tmp.gpkg"  # a live process's: kept
    alive.write_bytes(b"working")
    with replaced_atomically(tmp_path / "layer.gpkg", suffix=".tmp.gpkg") as first, \
            replaced_atomically(tmp_path / "layer.gpkg", suffix=".tmp.gpkg") as second:
        assert first != second and first.suffix == second.suffix == ".gpkg"
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert (tmp_path / "layer.gpkg").read_bytes() in (b"one", b"two")
    assert not stale.exists() and alive.exists()


def test_a_failed_write_on_a_disk_with_no_room_left_advises_freeing_space(tmp_path, monkeypatch):
    """GDAL's drivers said 'Cannot write feature' or 'Unexpected I/O failure' on a full disk, and the advice was to
    'pick another output folder or file name' (h118)."""
    import collections
    import shutil

    from geoseg.files import write_advice

    usage = collections.namedtuple("usage", "total used free")
    failure = RuntimeError("Cannot write feature")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 300_000))
    assert write_advice(failure, tmp_path).startswith("The disk has 0.3 MB left: free some disk space")
    assert write_advice(failure) == "Pick another output folder or file name"  # nowhere to look
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    assert write_advice(failure, tmp_path) == "Pick another output folder or file name"


def test_geopackages_are_written_as_version_1_2(make_raster, tmp_path):
    """pyogrio's GDAL 3.12 writes GeoPackage 1.4, of which GDAL 3.6 (Debian 12's, under its QGIS) warned on every
    open that it "may only be partially supported" (h120)."""
    import sqlite3

    from geoseg import segment
    from geoseg.workflows import survey

    image = make_raster(shape=(40, 48))
    result = segment(image, tmp_path / "one", model="threshold", vector=True, preview=False)
    done = survey([image], tmp_path / "survey", model="threshold", vector=True, preview=False)
    assert done.done
    for path in (result.outputs["vector"], tmp_path / "survey" / "survey_polygons.gpkg"):
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 10200, path


@pytest.mark.parametrize("rows", [(60, -60), (90, -90)])
def test_polygons_that_run_all_round_the_globe_get_their_ground_area(tmp_path, rows):
    """A class that runs from -180 to 180 in a global EPSG:4326 mask is a ring round a pole, whose geodesic area
    was that of the other side: a band 60 S-60 N read 8.4% over its area, a whole-world one 8.1% under (h127)."""
    from geoseg.raster import class_pixels_and_areas, inspect_raster

    north, south = rows
    height = north - south
    mask = np.zeros((height, 360), np.uint8)
    mask[height // 2 - 10 : height // 2 + 10, 100:140] = 1  # a lake inside the band
    path = tmp_path / "world.tif"
    with rasterio.open(path, "w", driver="GTiff", width=360, height=height, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-180, north, 1, 1), nodata=255) as ds:
        ds.write(mask, 1)
    frame = gpd.read_file(vectorize(path, tmp_path / "world.gpkg").path)
    areas = class_pixels_and_areas(str(path), inspect_raster(path), 256)[1]
    for class_id in (0, 1):
        got = frame.loc[frame["class_id"] == class_id, "area_m2"].sum()
        assert got == pytest.approx(areas[class_id], rel=1e-3), class_id


def test_areas_of_a_national_grid_at_its_edge_are_of_the_ground(tmp_path):
    """Lambert-93 (EPSG:2154) overstates areas by about 0.5% in Corsica, which the 1% rule measured as planar:
    mask and polygon areas read 20,000,000 m² of vegetation against 19,893,500 m² of ground (h127); QGIS's
    ellipsoidal $area gives the ground's."""
    import shapely
    from pyproj import Geod

    from geoseg.raster import class_pixels_and_areas, inspect_raster

    mask = np.zeros((100, 200), np.uint8)
    mask[:, :80] = 1
    transform = from_origin(1_200_000, 6_120_000, 100, 100)
    path = tmp_path / "corsica.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=100, count=1, dtype="uint8", crs="EPSG:2154",
                       transform=transform, nodata=255) as ds:
        ds.write(mask, 1)
    geod = Geod(ellps="WGS84")
    truth = []
    for box in (shapely.box(1_208_000, 6_110_000, 1_220_000, 6_120_000), shapely.box(1_200_000, 6_110_000,
                                                                                      1_208_000, 6_120_000)):
        ground = gpd.GeoSeries([shapely.segmentize(box, 100)], crs="EPSG:2154").to_crs("EPSG:4326").iloc[0]
        truth.append(abs(geod.geometry_area_perimeter(ground)[0]))
    areas = class_pixels_and_areas(str(path), inspect_raster(path), 256)[1]
    frame = gpd.read_file(vectorize(path, tmp_path / "corsica.gpkg").path)
    for class_id in (0, 1):
        assert areas[class_id] == pytest.approx(truth[class_id], rel=2e-4)
        assert frame.loc[frame["class_id"] == class_id, "area_m2"].sum() == pytest.approx(truth[class_id], rel=2e-4)
    assert abs(truth[1] / (80 * 100 * 100 * 100) - 1) > 0.004  # the planar figure is 0.4-0.6% off


@pytest.mark.parametrize("crs, origin, pixel", [
    ("EPSG:3031", (-500_000, -1_500_000), 5000),  # a strip across 180° south of the pole: GEOS's TopologyException
    ("EPSG:3857", (19_900_000, 7_000_000), 1000),  # a tile past the antimeridian: 386 times the area (h128)
    ("EPSG:3857", (0, 330_000), 1000),  # near the equator: PROJ's factors are the sphere's, polygons 0.67% over
    ("EPSG:2154", (700_000, 7_100_000), 5000),  # a 1000 km class of a national grid: 0.2% off by its centroid
])
def test_polygon_areas_equal_the_mask_s_ground_areas(tmp_path, crs, origin, pixel):
    from geoseg.raster import class_pixels_and_areas, inspect_raster

    mask = np.zeros((200, 200), np.uint8)
    mask[:, 90:110] = 1
    mask[40:60, 20:40] = 2  # a lake in class 0
    path = tmp_path / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8", crs=crs,
                       transform=from_origin(*origin, pixel, pixel), nodata=255) as ds:
        ds.write(mask, 1)
    areas = class_pixels_and_areas(str(path), inspect_raster(path), 256)[1]
    frame = gpd.read_file(vectorize(path, tmp_path / "m.gpkg").path)
    for class_id in (0, 1, 2):
        assert frame.loc[frame["class_id"] == class_id, "area_m2"].sum() == pytest.approx(areas[class_id], rel=1e-4)


def test_a_geopackage_mask_is_not_replaced_by_its_own_layer(make_mask, tmp_path):
    """A mask saved as a GeoPackage raster (QGIS's Save As) vectorised into the same file: "already exists. Pass
    --overwrite", and --overwrite then replaced the raster by the layer (h135)."""
    import subprocess

    tif = make_mask(np.array([[0, 1], [1, 0]], np.uint8))
    gpkg = tmp_path / "mask.gpkg"
    subprocess.run(["gdal_translate", "-q", "-of", "GPKG", str(tif), str(gpkg)], check=True)
    before = gpkg.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        vectorize(gpkg, gpkg, overwrite=True)
    assert gpkg.read_bytes() == before
    # named as GDAL names one raster of the file (QGIS's source of a GeoPackage raster layer), too (h136)
    with pytest.raises(OutputError, match="is the input"):
        vectorize(f"GPKG:{gpkg}:{gpkg.stem}", gpkg, overwrite=True)
    assert gpkg.read_bytes() == before


def test_polygons_along_a_pole_stay_valid_in_a_polar_crs(make_mask, tmp_path):
    """A mask's top edge at 90°N collapses to one point in EPSG:3413: its polygons came out self-intersecting
    there ("Ring Self-intersection[0 0]"), which QGIS and GEOS overlays refuse (h135)."""
    data = noisy_mask((256, 256), seed=3)
    path = make_mask(data, crs="EPSG:4326", transform=from_origin(10.0, 90.0, 0.001, 0.001))
    frame = gpd.read_file(vectorize(path, tmp_path / "polar.gpkg", to_crs="EPSG:3413").path)
    assert frame.is_valid.all() and (frame.geom_type == "Polygon").all()
    flat = gpd.read_file(vectorize(path, tmp_path / "flat.gpkg").path).to_crs("EPSG:3413")
    assert not flat.is_valid.all()  # what the reprojection alone makes
    assert frame.area.sum() == pytest.approx(flat.area.sum(), rel=1e-6)


def test_vectorize_s_result_gives_plain_data_as_the_other_results_do(make_mask, tmp_path):
    """VectorResult had no to_dict(), where segment's, scene's, flood's, survey's and evaluate's results have one
    (h133)."""
    result = vectorize(make_mask(np.array([[0, 1], [1, 2]], np.uint8)), tmp_path / "l.gpkg")
    data = result.to_dict()
    assert data["polygons"] == result.polygons and data["path"] == result.path and json.dumps(data)


def test_simplify_without_a_crs_is_in_pixels_as_min_area_is(make_mask, tmp_path, caplog):
    """A mask without a CRS took --min-area in pixels but --simplify in the units of its geotransform (a GeoTIFF of
    0.5-unit pixels without a CRS simplified at 2 units, 4 px), and the warning named --min-area's unit only (h162).
    Both are pixels now, whatever the geotransform: the same polygons, scaled, as the mask on the identity grid."""
    data = noisy_mask((60, 70), smooth=3)
    plain = make_mask(data, name="plain.tif", crs=None, transform=rasterio.Affine.identity())
    placed = make_mask(data, name="placed.tif", crs=None, transform=rasterio.transform.from_origin(1000, 5000, 0.5, 0.5))
    a = vectorize(plain, tmp_path / "a.gpkg", min_area=20, simplify=2)
    assert "plain.tif has no CRS, so --min-area (min_area=) 20 counts pixels, not m² and --simplify (simplify=) 2 " \
           "is in pixels, not metres" in caplog.text, caplog.text
    b = vectorize(placed, tmp_path / "b.gpkg", min_area=20, simplify=2)
    first, second = gpd.read_file(a.path), gpd.read_file(b.path)
    assert len(first) == len(second) > 0
    # identity: x = column, y = -row; the placed grid: x = 1000 + column / 2, y = 5000 - row / 2
    scaled = first.geometry.affine_transform([0.5, 0, 0, 0.5, 1000, 5000])
    assert sorted(round(g.area, 6) for g in scaled) == sorted(round(g.area, 6) for g in second.geometry)
    assert sorted(len(g.exterior.coords) for g in scaled) == sorted(len(g.exterior.coords) for g in second.geometry)


def test_a_cog_refused_for_disk_space_says_a_need_over_what_is_free(make_raster, tmp_path, monkeypatch):
    """Both sizes were to one decimal: 'about 1.0 MB needed, 1.0 MB free' for a need a few KB over the space."""
    import collections
    import shutil

    from geoseg.raster import write_cog

    staged = make_raster(shape=(40, 40), bands=1)
    need = 2 * staged.stat().st_size + 2**20
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, need - 2_000))
    with pytest.raises(OutputError) as refused:
        write_cog(staged, tmp_path / "out.tif")
    said = re.search(r"about ([\d.]+) MB needed, ([\d.]+) MB free", str(refused.value))
    needed, free = float(said[1]), float(said[2])
    assert needed > free


@pytest.mark.parametrize("options", [{}, {"min_area": 40.0, "specks": "merge"}, {"simplify": 2.0}],
                         ids=["streamed", "merged", "simplified"])
def test_progress_reported_per_block(make_mask, tmp_path, monkeypatch, options):
    """vectorize reported no progress: `geoseg vectorize` of a mask of 445,000 polygons ran 70 s without a word on a
    terminal, and segment --vector's bar sat at 95% with 0 s remaining for as long (the polygons' measures)."""
    import geoseg.vector as vector

    monkeypatch.setattr(vector, "STREAM_BATCH", 50)  # several batches written as the blocks come
    path = make_mask(noisy_mask((120, 130), seed=3, smooth=2))
    seen: list[float] = []
    vectorize(path, tmp_path / "p.gpkg", block=32, progress=seen.append, **options)
    assert len(seen) >= 16 and seen == sorted(seen), seen  # 4x5 blocks, each reported; never backwards
    assert 0 < seen[0] < 0.1 and seen[-2] <= 0.9 and seen[-1] == 1.0


def test_progress_must_be_callable(make_mask, tmp_path):
    with pytest.raises(InputError, match="progress"):
        vectorize(make_mask(noisy_mask((40, 40))), tmp_path / "p.gpkg", progress=3)


def test_a_geopackage_whose_commit_failed_is_an_output_error(tmp_path, monkeypatch):
    """GDAL makes a GeoPackage's spatial index as it closes the file; with the disk full that COMMIT failed
    ("sqlite3_exec(COMMIT) failed: database or disk is full"), GDAL only logged it, and the file without its index
    was put in place as written, by the CLI and the web page alike (h170)."""
    import ctypes

    import pyogrio

    import geoseg.vector as vector
    from geoseg.errors import OutputError

    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8", crs="EPSG:32640",
                       transform=from_origin(500000, 2800000, 1, 1), nodata=255) as ds:
        ds.write((np.arange(40 * 30).reshape(1, 30, 40) // 300).astype(np.uint8))
    write_arrow = pyogrio.write_arrow

    def without_index(reader, path, **kwargs):  # the file as the failed COMMIT left it: no rtree tables
        write_arrow(reader, path, **kwargs, layer_options={"SPATIAL_INDEX": "NO"})

    monkeypatch.setattr(pyogrio, "write_arrow", without_index)
    with pytest.raises(OutputError, match="without the spatial index of layer: is the disk full"):
        vector.vectorize(mask, tmp_path / "layer.gpkg")
    assert not list(tmp_path.glob("*layer*"))
    gdal = vector._pyogrio_gdal()
    if gdal is not None:  # GDAL's error state, as the failed COMMIT leaves it, with its message

        def commit_failed(reader, path, **kwargs):
            write_arrow(reader, path, **kwargs)
            gdal.CPLError.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
            gdal.CPLError(3, 1, b"%s", b"sqlite3_exec(COMMIT) failed: database or disk is full")

        monkeypatch.setattr(pyogrio, "write_arrow", commit_failed)
        with pytest.raises(OutputError, match=r"database or disk is full\)\. Free some disk space"):
            vector.vectorize(mask, tmp_path / "layer.gpkg")
        assert not list(tmp_path.glob("*layer*"))
    monkeypatch.setattr(pyogrio, "write_arrow", write_arrow)
    assert vector.vectorize(mask, tmp_path / "layer.gpkg").polygons == 4  # and a write that succeeds passes


def test_vectorize_stops_at_what_its_progress_raises(tmp_path):
    """A server's cancel: the progress callback, called as each block is done, stops the run; nothing is left."""
    from geoseg.vector import vectorize

    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", driver="GTiff", width=300, height=20, count=1, dtype="uint8", crs="EPSG:32640",
                       transform=from_origin(500000, 2800000, 1, 1), nodata=255) as ds:
        ds.write(np.zeros((1, 20, 300), np.uint8))
    seen = []

    class Stop(Exception):
        pass

    def progress(fraction):
        seen.append(fraction)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        vectorize(mask, tmp_path / "p.gpkg", block=64, progress=progress)
    assert len(seen) == 2 and not list(tmp_path.glob("*p.*"))
    seen.clear()
    vectorize(mask, tmp_path / "p.gpkg", block=64, progress=seen.append)
    # half the bar for the 5 blocks polygonised, the other half for their polygons measured and written
    assert seen[:5] == pytest.approx([0.09, 0.18, 0.27, 0.36, 0.45]) and seen == sorted(seen) and seen[-1] == 1.0
