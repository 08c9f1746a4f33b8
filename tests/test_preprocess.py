import numpy as np
import pytest

import dataclasses

from radnet_tf import preprocess as P
from radnet_tf.config import Config


def pcfg(**overrides):
    """The paper's preprocessing (Config defaults) with some fields replaced."""
    return dataclasses.replace(Config().preprocess_config(), **overrides)


def test_brain_window_exact_values():
    hu = np.arange(-20, 100, 10, dtype=np.int16)  # window 40/80 spans [0, 80] HU
    expected = np.clip((np.arange(-20, 100, 10) - 0) / 80.0, 0, 1)
    np.testing.assert_allclose(P.brain_window(hu, 40, 80).numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(P.brain_window_np(hu, 40, 80), expected, atol=1e-7)


def test_window_channels_brain_then_extra_windows():
    hu = np.array([-100, -20, 0, 40, 80, 180, 1300], np.int16)
    cfg = pcfg(extra_windows=((80, 200),))  # subdural window spans [-20, 180]
    assert cfg.windows == ((40.0, 80.0), (80.0, 200.0))
    expected = np.stack([[0, 0, 0, 0.5, 1, 1, 1], [0, 0, 0.1, 0.3, 0.5, 1, 1]], axis=-1)
    np.testing.assert_allclose(P.window_channels(hu, cfg.windows).numpy(), expected, atol=1e-7)
    with pytest.raises(ValueError, match="widths must be > 0"):
        pcfg(extra_windows=((80, 0),))


def test_multi_window_study_tf_matches_numpy_and_keeps_brain_channel():
    hu = np.random.default_rng(1).integers(-1024, 1500, size=(2, 40, 40)).astype(np.int16)
    one = pcfg(out_size=32, fov_mm=60, out_spacing=2.0)
    two = pcfg(out_size=32, fov_mm=60, out_spacing=2.0, extra_windows=((80, 200),))
    tf_two = P.preprocess_study(hu, (1.5, 1.5), two).numpy()
    assert tf_two.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(tf_two, P.preprocess_study_np(hu, (1.5, 1.5), two), atol=1e-3)
    np.testing.assert_array_equal(tf_two[..., :1], P.preprocess_study(hu, (1.5, 1.5), one).numpy())


def test_head_center_matches_reference_on_asymmetric_blob():
    hu = np.full((2, 20, 30), -1000, np.int16)
    hu[0, 2:6, 20:29] = 40
    hu[1, 3:5, 10:12] = 40
    np.testing.assert_allclose(P.head_center(hu).numpy(), P.head_center_np(hu), atol=1e-4)
    empty = np.full((1, 9, 5), -1000, np.int16)
    np.testing.assert_allclose(P.head_center(empty).numpy(), [4.0, 2.0])


def test_head_center_counts_integer_and_float_studies_alike():
    hu = np.full((3, 4, 5), -1000, np.int16)
    hu[0, 1, 1] = -300  # not above the -300 HU threshold
    hu[1, 2, 3] = -299
    hu[2, 3, 0] = 40
    want = [(2 + 3) / 2, (3 + 0) / 2]
    np.testing.assert_array_equal(P.head_center(hu).numpy(), want)
    np.testing.assert_array_equal(P.head_center(hu.astype(np.float32)).numpy(), want)
    stored = np.zeros((2, 4, 5), np.uint16)  # unsigned: the -300 HU threshold must not wrap
    stored[1, 3, 4] = 65535  # above -300 like every other voxel (not above a wrapped 65236)
    np.testing.assert_array_equal(P.head_center(stored).numpy(), [1.5, 2.0])


@pytest.mark.parametrize(
    "spacing,center",
    [((0.7, 1.3), (17.2, 25.9)), ((2.0, 2.0), (3.0, 40.0)), ((0.45, 0.45), (18.0, 26.0))],
)
def test_resample_tf_matches_numpy_reference(spacing, center):
    x = np.random.default_rng(0).normal(size=(2, 37, 53)).astype(np.float32) * 100
    cfg = pcfg(out_size=32, fov_mm=30, out_spacing=1.0)
    tf_out = P.resample_to_fov(x, spacing, center, cfg).numpy()
    np_out = P.resample_to_fov_np(x, spacing, center, cfg)
    np.testing.assert_allclose(tf_out, np_out, atol=2e-3)


def test_disk_is_resampled_to_1mm_and_centred_on_the_head():
    # A 50 mm-radius disk at 0.5 mm pixels, off-centre in a 400x400 image.
    yy, xx = np.mgrid[:400, :400]
    hu = np.where((yy - 150) ** 2 + (xx - 230) ** 2 <= 100**2, 40, -1000).astype(np.int16)[None]
    out = P.resample_to_fov(hu, (0.5, 0.5), P.head_center(hu), pcfg()).numpy()[0]
    assert out.shape == (256, 256)
    inside = out > (40 - 1000) / 2  # half way between disk and air
    area_mm2 = inside.sum()  # 1 mm pixels
    assert area_mm2 == pytest.approx(np.pi * 50**2, rel=0.02)
    rows, cols = np.nonzero(inside)
    assert rows.mean() == pytest.approx(127.5, abs=0.5) and cols.mean() == pytest.approx(
        127.5, abs=0.5
    )


def test_outside_fov_and_outside_image_is_air():
    hu = np.full((1, 600, 600), 40, np.int16)  # everything is "brain", 0.5 mm -> 300 mm wide
    out = P.preprocess_study(hu, (0.5, 0.5), pcfg()).numpy()[0, ..., 0]
    # 256 px at 1 mm: the central 250 mm are brain, the 3 px borders are outside the FOV.
    assert (out[:3] == 0).all() and (out[-3:] == 0).all() and (out[:, :3] == 0).all()
    assert np.allclose(out[3:-3, 3:-3], 0.5)
    small = np.full((1, 100, 100), 40, np.int16)  # 50 mm image: the rest is air
    out = P.preprocess_study(small, (0.5, 0.5), pcfg()).numpy()[0, ..., 0]
    assert np.isclose(out[128, 128], 0.5) and out[10, 10] == 0


def test_mask_resampling_keeps_binary_mask_aligned():
    mask = np.zeros((1, 100, 100), np.uint8)
    mask[0, 20:40, 60:90] = 1
    center = (49.5, 49.5)
    cfg = pcfg(out_size=64, fov_mm=100, out_spacing=2.0)
    out = P.resample_mask(mask, (1.0, 1.0), center, cfg).numpy()[0]
    assert set(np.unique(out)) <= {0, 1}
    rows, cols = np.nonzero(out)
    # 1 mm -> 2 mm: the 20x30 box becomes ~10x15 pixels. Its centre (29.5, 74.5) px is
    # (-20.5, +24.5) mm from the image centre (49.5) -> output pixel 31.5 + mm / 2.
    assert out.sum() == pytest.approx(150, rel=0.15)
    assert rows.mean() == pytest.approx(31.5 - 20.5 / 2, abs=0.6)
    assert cols.mean() == pytest.approx(31.5 + 24.5 / 2, abs=0.6)


def test_mask_resampling_keeps_fractions_of_a_sheared_mask():
    # a tilt-corrected mask holds fractions: 0.75 stays blood, 0.25 does not
    mask = np.zeros((1, 8, 8), np.float32)
    mask[0, 2:6, 2:6] = 0.75
    mask[0, 6:8, :] = 0.25
    cfg = pcfg(out_size=8, fov_mm=8, out_spacing=1.0)
    out = P.resample_mask(mask, (1.0, 1.0), (3.5, 3.5), cfg).numpy()[0]
    want = np.zeros((8, 8), np.uint8)
    want[2:6, 2:6] = 1
    np.testing.assert_array_equal(out, want)


def test_real_series_tf_matches_numpy(shared):
    from radnet_tf.io.dicom import read_series

    series = read_series(shared / "ge-head-tilt")
    tf_out = P.preprocess_study(series.hu, series.pixel_spacing, pcfg()).numpy()
    np_out = P.preprocess_study_np(series.hu, series.pixel_spacing, pcfg())
    assert tf_out.shape == (28, 256, 256, 1)
    assert np.abs(tf_out - np_out).max() < 1e-3
