"""The anatomical phantom's parts: atlas, scanner, lesions (radnet_tf.synth_*)."""

import numpy as np
import pytest
from scipy import ndimage

from radnet_tf.phantom import generate as synth
from radnet_tf.phantom import lesions as synth_lesions
from radnet_tf.phantom import scanner as synth_scanner
from radnet_tf.phantom import anatomy
from radnet_tf.contract import SUBTYPES


@pytest.fixture(scope="module")
def atlas():
    return anatomy.atlas()


def channels_at(atlas, *points):
    return [
        dict(zip(anatomy.CHANNELS, row)) for row in atlas.sample(np.array(points, np.float32).T)
    ]


def test_atlas_compartments(atlas):
    wm, vent, falx, skull = channels_at(
        atlas, (25, -10, 25), (8, 0, 18), (0, -20, 78), (0, -20, 88)
    )
    assert wm["icv"] == 1 and wm["wm"] > 0.9 and wm["frame"] == 0  # deep white matter
    assert vent["vent"] == 1 and vent["gm"] + vent["wm"] == 0  # body of a lateral ventricle
    assert falx["dense"] > 0.9 and falx["depth"] < 8  # falx and superior sagittal sinus
    assert skull["icv"] == 0 and skull["frame"] > 1000  # the vault
    # Every lesion place exists, lateral + third + fourth ventricles hold 15-40 mL.
    counts = {label: len(atlas.points(label)) for label in range(1, 7)}
    assert min(counts.values()) > 1000 and 15_000 < counts[anatomy.LABEL_VENTRICLE] < 40_000
    lo, hi = atlas.head_extent()
    assert lo[2] < -90 and hi[2] > 95  # second cervical vertebra to vertex


def test_atlas_neck_levels(atlas):
    """Below the foramen magnum (where real series start): no intracranial space, a
    vertebra, and fat planes between the muscles; none of those planes in the scalp."""
    k = int(round(-85 - atlas.origin[2]))
    neck = atlas.channels[:, :, k]
    c = {name: neck[..., i] for i, name in enumerate(anatomy.CHANNELS)}
    assert c["icv"].max() == 0 and c["gm"].max() == 0
    assert np.count_nonzero(c["frame"] > 700) > 100  # bone
    soft = (c["frame"] > -60) & (c["frame"] < 200)
    assert 0.05 < np.mean(c["fascia"][soft] > 0.5) < 0.3  # thin planes, most of it muscle
    vault = atlas.channels[:, :, int(round(40 - atlas.origin[2])), anatomy.CHANNELS.index("fascia")]
    assert vault.max() == 0


def test_atlas_straight_sinus(atlas):
    """A dense midline strip between the occipital lobes and the cerebellum."""
    x, y, z = np.meshgrid(np.arange(-2, 3), np.arange(-90, -44), np.arange(-25, 11), indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(np.float32)
    ch = atlas.sample(pts)
    # away from the inner table, so neither the transverse sinuses nor the torcula count
    dense = (ch[:, anatomy.CHANNELS.index("dense")] > 0.5) & (
        ch[:, anatomy.CHANNELS.index("depth")] > 8
    )
    assert np.count_nonzero(dense) > 1000  # 189 before the straight sinus was drawn
    assert np.ptp(pts[1, dense]) > 25  # runs front to back


def test_slab_centres_reach_from_the_neck_to_the_top_of_the_skull(atlas):
    """Real series run from the upper neck to above the vertex: the slab-centre bounds
    lie below the intracranial space and above the brain, still within the skull."""
    z = np.arange(atlas.channels.shape[2]) + atlas.origin[2]
    ch = {name: atlas.channels[..., i] for i, name in enumerate(anatomy.CHANNELS)}
    brain_top = z[((ch["gm"] + ch["wm"]) > 0.5).any((0, 1))].max()
    icv_bottom = z[(ch["icv"] > 0.5).any((0, 1))].min()
    bone_top = z[(ch["frame"] > 700).any((0, 1))].max()
    assert synth._LOWEST[2] < icv_bottom + 10  # the foramen magnum region (or lower)
    assert brain_top < synth._HIGHEST[2] <= bone_top  # vertex-cap slices: bone, little or no brain


@pytest.mark.slow
def test_atlas_cache_equals_a_fresh_build(atlas):
    """The on-disk cache (float16) and a fresh build give the same channels: a cohort does
    not depend on whether the cache existed."""
    fresh = anatomy.build_atlas()
    np.testing.assert_array_equal(fresh.channels, atlas.channels)
    np.testing.assert_array_equal(fresh.labels, atlas.labels)


def test_sample_is_trilinear(atlas):
    i, j, k = 100, 110, 90
    mm = atlas.origin + np.array([i + 0.25, j, k + 0.5])
    got = atlas.sample(mm.astype(np.float32)[:, None])[0]
    c = atlas.channels
    want = (
        0.75 * 0.5 * c[i, j, k]
        + 0.25 * 0.5 * c[i + 1, j, k]
        + 0.75 * 0.5 * c[i, j, k + 1]
        + 0.25 * 0.5 * c[i + 1, j, k + 1]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def tiny_atlas():
    """A 12^3 atlas: air everywhere but one voxel of bone at (6, 6, 6)."""
    channels = np.zeros((12, 12, 12, len(anatomy.CHANNELS)), np.float32)
    channels[..., anatomy.CHANNELS.index("frame")] = anatomy.AIR_HU
    channels[6, 6, 6, anatomy.CHANNELS.index("frame")] = 1000.0
    return anatomy.Atlas(channels, np.zeros((12, 12, 12), np.uint8), np.zeros(3))


def test_solid_marks_every_point_whose_sample_is_not_air():
    atlas = tiny_atlas()
    grid = np.stack(np.meshgrid(*[np.arange(0, 11.01, 0.25)] * 3, indexing="ij"), 0)
    points = grid.reshape(3, -1).astype(np.float32)
    solid, values = atlas.solid(points), atlas.sample(points)
    air = np.all(values == atlas.air_value(), axis=1)
    assert not np.any(~solid & ~air)  # every sample off air is solid ...
    assert np.any(solid & ~air) and np.any(solid & air)
    # ... in blocks of 4 voxels: only block 1 on each axis (floor 4..7, corners up to 8)
    # reaches the bone voxel 6
    np.testing.assert_array_equal(solid, np.all((points >= 4) & (points < 8), axis=0))
    assert not atlas.solid(np.array([[0.5], [0.5], [0.5]], np.float32))[0]


def test_the_phantom_renders_air_points_as_the_full_sampler_does(monkeypatch):
    cfg = synth.SynthConfig(matrix=96, num_slices=3, pixel_spacing_range=(2.4, 2.6))
    fast = synth.make_phantom(np.random.default_rng([7, 1]), cfg, positive=True)
    monkeypatch.setattr(anatomy.Atlas, "solid", lambda self, mm: np.ones(mm.shape[1], bool))
    full = synth.make_phantom(np.random.default_rng([7, 1]), cfg, positive=True)
    assert np.abs(fast.hu.astype(int) - full.hu).max() <= 1  # float rounding, then rint
    np.testing.assert_array_equal(fast.class_mask, full.class_mask)
    np.testing.assert_array_equal(fast.slice_labels, full.slice_labels)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_upsample_matches_scipy_zoom(factor):
    a = np.arange(35, dtype=np.float32).reshape(5, 7) ** 1.5
    want = ndimage.zoom(a, factor, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(synth_scanner.upsample(a, factor), want, rtol=1e-6)


def test_thin_slices_are_noisier():
    thin = synth_scanner.draw_scanner(np.random.default_rng(0), 0.625, 95.0, noise_range=(3.0, 3.0))
    thick = synth_scanner.draw_scanner(np.random.default_rng(0), 5.0, 95.0, noise_range=(3.0, 3.0))
    assert thick.noise_hu == 3.0 and thin.noise_hu == pytest.approx(3.0 * 8.0**0.25)


@pytest.mark.parametrize("factor", [1, 3])
def test_noise_has_the_asked_standard_deviation(factor):
    scanner = synth_scanner.Scanner(
        noise_hu=10.0, grain=0.6, cupping_hu=0, streak_hu=0, band_hu=0, holder=None
    )
    noise = synth_scanner.noise(np.random.default_rng(1), (600, 600), scanner, factor)
    assert noise.std() == pytest.approx(10.0, rel=0.03)


def test_holder_is_drawn_only_in_air():
    img = np.full((100, 100), -1000.0, np.float32)
    yy, xx = np.mgrid[:100, :100]
    head = (yy - 50) ** 2 + (xx - 50) ** 2 < 30**2
    img[head] = 30.0
    scanner = synth_scanner.Scanner(
        3.0, 0.5, 0, 0, 0, holder=(35.0, 4.0, np.deg2rad(60), 200.0, -800.0, 5.0)
    )
    axis = -(np.arange(100, dtype=np.float32) - 49.5)  # patient x of columns, y of rows (1 mm)
    synth_scanner.add_holder(img, axis, axis, (0.0, 0.0), scanner)
    assert np.all(img[head] == 30.0)
    shell = img == 200.0
    assert shell.sum() > 50 and np.all(yy[shell] > 50)  # behind the head (rows grow posterior)
    assert (img == -800.0).sum() > 50


def test_mass_effect_displacement_is_exact():
    les = synth_lesions.Lesion(
        "SDH", np.array([50.0, 0, 0], np.float32), 20.0, 70.0, push=8.0, reach=40.0, params={}
    )
    m = np.zeros((3, 1), np.float32)
    src = synth_lesions.displacement([les], m)
    # The brain at the origin is sampled 8 exp(-0.5 (50/40)^2) mm toward the lesion: pushed away.
    np.testing.assert_allclose(src[:, 0], [8 * np.exp(-0.5 * (50 / 40) ** 2), 0, 0], rtol=1e-4)
    assert synth_lesions.displacement([], m) is None


@pytest.mark.parametrize("kind", SUBTYPES)
def test_each_bleed_sits_in_its_compartment(atlas, kind):
    rng = np.random.default_rng([7, SUBTYPES.index(kind)])
    pose = synth._Pose(rng)
    found = 0
    for _ in range(5):
        les = synth_lesions.draw_lesion(rng, atlas, pose.to_patient, (-300.0, 300.0), kind=kind)
        grid = np.mgrid[-40:41:2, -40:41:2, -40:41:2].reshape(3, -1).astype(np.float32)
        m = grid + les.centre[:, None]
        ch = atlas.sample(m)
        f = les.fraction(m, ch, pose.to_patient(m.T)[:, 1])
        on = f >= 0.5
        if not on.any():
            continue
        found += 1
        c = {name: ch[on, i] for i, name in enumerate(anatomy.CHANNELS)}
        assert np.all(c["icv"] > 0.5)
        assert 50 <= les.blood_hu <= 90
        if kind == "EDH" or (kind == "SDH" and les.params["along"] == "convexity"):
            assert np.all(c["depth"] < les.params["thickness"])  # under the inner table
        elif kind == "IVH":
            assert np.all(c["vent"] > 0.3)
        elif kind == "SAH":
            assert np.all(c["icv"] - c["gm"] - c["wm"] - c["vent"] > 0.3)  # CSF, not ventricles
        elif kind == "IPH":
            assert np.all(c["depth"] > 1.0)
    assert found >= 3


def test_phantom_spans_skull_base_to_vertex():
    """Whole-head studies: slices from the posterior fossa (bone and air around a small
    brain) to the vertex; a slab longer than the head is centred on it."""
    cfg = synth.SynthConfig(
        matrix=96, num_slices=48, pixel_spacing_range=(2.6, 2.6), slice_thickness_range=(4.0, 4.0)
    )
    ph = synth.make_phantom(np.random.default_rng(3), cfg, positive=False)
    head = (ph.hu > -300).reshape(48, -1).sum(1)
    air_inside = [
        (s < -300).sum() - (ndimage.binary_fill_holes(s > -300) == 0).sum() for s in ph.hu
    ]
    widest = int(np.argmax(head))
    assert head[-1] < head[widest] / 3  # the vertex tapers (or the slab passes it)
    assert max(air_inside[:widest]) > 20  # sinuses / mastoid air below the widest slice


def test_cupping_profile_is_exact():
    scanner = synth_scanner.Scanner(
        3.0, 0.5, cupping_hu=10.0, streak_hu=0, band_hu=0, holder=None, cupping_mm=4.0
    )
    got = synth_scanner.cupping_profile(np.array([3.0, 7.0, 0.0], np.float32), scanner)
    np.testing.assert_allclose(got, [10.0, 10.0 / np.e, 10.0 * np.exp(0.75)], rtol=1e-6)


def test_brain_brightens_toward_the_skull():
    # Real head CT at the model's 1.5 mm grid: the brain 3 mm under the inner table is 7-10
    # HU denser than 15 mm deep (three scanners, BENCHMARKS.md). Here (whole heads, skull
    # base included): generator 11 +1 HU, generator 12 +5 HU.
    from scipy import ndimage

    cfg = synth.SynthConfig(
        matrix=176,
        num_slices=36,
        pixel_spacing_range=(1.5, 1.5),
        slice_thickness_range=(5.0, 5.0),
        noise_hu_range=(1.0, 1.0),
        tilt_fraction=0.0,
    )
    rim, deep = [], []
    for i in range(2):  # two whole heads, 5 mm slices
        ph = synth.make_phantom(np.random.default_rng([4, i]), cfg, positive=False)
        for s in ph.hu.astype(np.float32):
            bone = s >= 150
            inside = ndimage.binary_fill_holes(ndimage.binary_closing(bone, iterations=3)) & ~bone
            depth = ndimage.distance_transform_edt(inside)  # pixels of 1.5 mm
            brain = inside & (s > 10) & (s < 70)
            rim.append(s[brain & (depth > 1.5) & (depth <= 2.5)])  # 3 mm
            deep.append(s[brain & (depth > 9.5) & (depth <= 10.5)])  # 15 mm
    rim, deep = np.concatenate(rim), np.concatenate(deep)
    assert rim.size > 2000 and deep.size > 2000
    assert np.median(rim) - np.median(deep) >= 4.0
