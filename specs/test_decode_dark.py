"""Decoder choice and DARK (Zhang et al., CVPR 2020) decoding.

Heatmaps are 48 wide and 64 high, as HRNet's 256 x 192 input gives. A
hand-built Gaussian heatmap samples exp(-((x - cx)^2 + (y - cy)^2) / (2 sigma^2))
at the integer pixels, sigma 2, so its true sub-pixel centre (cx, cy) is known.
"""

import chex
import jax
import numpy as np
import pytest

from hrnet_jax.decode import DECODERS, get_final_preds, heatmap_coords

W, H = 48, 64
FRACTIONS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.73)
# 36 centres away from the border, each integer part different: x = 10, 15, ...
# 35 and y = 15, 21, ... 45 plus every pair of fractions.
CENTRES = np.array([(10 + 5 * ix + fx, 15 + 6 * iy + fy)
                    for ix, fx in enumerate(FRACTIONS) for iy, fy in enumerate(FRACTIONS)])


BOX_CENTER, BOX_SCALE = np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]])


def gaussian_map(cx, cy, sigma=2.0, amplitude=1.0):
    """(H, W) float32 Gaussian centred at (cx, cy), sampled at integer pixels."""
    ys, xs = np.mgrid[0:H, 0:W]
    return (amplitude * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))).astype(
        np.float32)


def batch(*maps):
    """(1, J, H, W) from J maps."""
    return np.stack(maps)[None]


def spike_map(values):
    """(H, W) float32, zero but for {(x, y): value}."""
    m = np.zeros((H, W), np.float32)
    for (x, y), v in values.items():
        m[y, x] = v
    return m


def test_the_decoders_are_argmax_reference_and_dark():
    assert DECODERS == ("argmax", "reference", "dark")


def test_dark_recovers_gaussian_centres_within_0_05_px_where_the_quarter_shift_misses_by_0_25():
    hm = batch(*(gaussian_map(cx, cy) for cx, cy in CENTRES))
    dark, _ = heatmap_coords(hm, "dark")
    reference, _ = heatmap_coords(hm, "reference")
    dark_error = np.abs(np.asarray(dark)[0] - CENTRES).max()
    reference_error = np.abs(np.asarray(reference)[0] - CENTRES).max()
    assert dark_error < 0.05
    # The fraction 0.5 ties two pixels: the first is the argmax and a quarter
    # step lands 0.25 px short; 0.1 and 0.4 miss by 0.15.
    assert 0.2 < reference_error <= 0.25 + 1e-6


def test_dark_recovers_the_centre_of_a_tilted_gaussian_through_the_cross_derivative():
    # Covariance [[4, 3], [3, 6]]: blurred, still a Gaussian (covariance + 4 I),
    # whose log is quadratic with Lxy != 0.
    precision = np.linalg.inv([[4.0, 3.0], [3.0, 6.0]])
    ys, xs = np.mgrid[0:H, 0:W]
    centres = np.array([(20.4, 30.3), (25.1, 33.73), (18.5, 28.25)])
    maps = []
    for cx, cy in centres:
        d = np.stack([xs - cx, ys - cy], axis=-1)
        maps.append(np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, precision, d)))
    coords, _ = heatmap_coords(batch(*maps).astype(np.float32), "dark")
    np.testing.assert_allclose(np.asarray(coords)[0], centres, atol=0.05)


def test_a_peak_on_an_integer_pixel_stays_there():
    hm = batch(gaussian_map(20.0, 30.0), spike_map({(25, 40): 1.0}))
    coords, _ = heatmap_coords(hm, "dark")
    np.testing.assert_allclose(np.asarray(coords), [[[20.0, 30.0], [25.0, 40.0]]], atol=1e-3)


# Taps of cv2.getGaussianKernel(k, 0) up to normalisation (which the log
# derivatives do not see): sigma = 0.3 ((k - 1) / 2 - 1) + 0.8 = 2 for 11,
# OpenCV's fixed tables for 9 and 7.
OPENCV_TAPS = {
    11: np.exp(-np.arange(-5, 6) ** 2 / 8.0),
    9: np.array([4, 13, 30, 51, 60, 51, 30, 13, 4], np.float64),
    7: np.array([1, 3.5, 7, 9, 7, 3.5, 1]),
}


def newton_x_for_spike_pair(taps):
    """x after DARK's step on spikes 1 at (20, 30) and 0.5 at (21, 30).

    The blurred map is t(y - 30) u(x) with u(x) = t(x - 20) + 0.5 t(x - 21), so
    its log is separable: Lxy = 0, Ly = 0, and x moves by -Lx / Lxx with the
    stencils Lx = (L(21) - L(19)) / 2 and Lxx = (L(22) - 2 L(20) + L(18)) / 4.
    """
    radius = len(taps) // 2

    def log_u(x):
        t = lambda i: taps[i + radius] if abs(i) <= radius else 0.0  # noqa: E731
        return np.log(t(x - 20) + 0.5 * t(x - 21))

    lx = 0.5 * (log_u(21) - log_u(19))
    lxx = 0.25 * (log_u(22) - 2 * log_u(20) + log_u(18))
    return 20.0 - lx / lxx


@pytest.mark.parametrize("blur_kernel", [11, 9, 7])
def test_dark_takes_a_newton_step_on_the_log_of_the_opencv_blurred_map(blur_kernel):
    hm = batch(spike_map({(20, 30): 1.0, (21, 30): 0.5}))
    coords, _ = heatmap_coords(hm, "dark", blur_kernel=blur_kernel)
    want_x = newton_x_for_spike_pair(OPENCV_TAPS[blur_kernel])
    assert 20.2 < want_x < 20.5  # towards the second spike (about 20.32 for 11)
    np.testing.assert_allclose(np.asarray(coords), [[[want_x, 30.0]]], atol=1e-4)


def test_the_blurred_map_is_rescaled_to_the_original_maximum_before_the_1e_10_floor():
    # Blurred, these spikes peak at about 6e-11, under the floor. Rescaled, the
    # stencil's values stay above the floor and the step is that of spikes 1 and 0.5.
    hm = batch(spike_map({(20, 30): 1e-9, (21, 30): 0.5e-9}))
    coords, maxvals = heatmap_coords(hm, "dark")
    np.testing.assert_allclose(np.asarray(coords),
                               [[[newton_x_for_spike_pair(OPENCV_TAPS[11]), 30.0]]], atol=1e-4)
    np.testing.assert_allclose(np.asarray(maxvals), [[[1e-9]]], rtol=1e-6)


def dark_by_definition(m, taps, pad_mode):
    """DARK on one (H, W) map in float64, the map taken beyond its border as np.pad's mode."""
    taps = np.asarray(taps, np.float64) / np.sum(taps)
    radius = len(taps) // 2
    padded = np.pad(m.astype(np.float64), radius, mode=pad_mode)
    blurred = sum(taps[i] * taps[j] * padded[j:j + H, i:i + W]
                  for i in range(len(taps)) for j in range(len(taps)))
    log_map = np.log(np.maximum(blurred * m.max() / blurred.max(), 1e-10))
    py, px = np.unravel_index(np.argmax(m), m.shape)

    def f(sx, sy):
        return log_map[py + sy, px + sx]

    gradient = 0.5 * np.array([f(1, 0) - f(-1, 0), f(0, 1) - f(0, -1)])
    lxy = 0.25 * (f(1, 1) - f(-1, 1) - f(1, -1) + f(-1, -1))
    hessian = 0.25 * np.array([[f(2, 0) - 2 * f(0, 0) + f(-2, 0), 4 * lxy],
                               [4 * lxy, f(0, 2) - 2 * f(0, 0) + f(0, -2)]])
    return np.array([px, py]) - np.linalg.solve(hessian, gradient)


def test_the_blur_takes_the_map_as_zero_beyond_the_border_as_the_authors_padding_does():
    # A peak two pixels from the left edge, on a background: the blur's taps
    # reach five pixels past the edge, where zeros and a replicated edge differ.
    m = gaussian_map(2.3, 30.4) + 0.05
    zeros = dark_by_definition(m, OPENCV_TAPS[11], "constant")
    replicated = dark_by_definition(m, OPENCV_TAPS[11], "edge")
    assert abs(zeros[0] - replicated[0]) > 0.05
    coords, _ = heatmap_coords(batch(m), "dark")
    np.testing.assert_allclose(np.asarray(coords)[0, 0], zeros, atol=1e-3)


def test_peaks_outside_1_lt_px_lt_w_minus_2_and_1_lt_py_lt_h_minus_2_stay_at_the_argmax():
    # Argmax columns 1 and W - 2 = 46, rows 1 and H - 2 = 62: neither axis moves.
    outside = [(1.3, 30.4), (46.3, 30.4), (20.4, 1.3), (20.4, 62.3)]
    hm = batch(*(gaussian_map(cx, cy) for cx, cy in outside))
    coords, _ = heatmap_coords(hm, "dark")
    np.testing.assert_array_equal(np.asarray(coords),
                                  [[[1.0, 30.0], [46.0, 30.0], [20.0, 1.0], [20.0, 62.0]]])


def test_peaks_in_columns_2_and_w_minus_3_and_rows_2_and_h_minus_3_are_refined():
    # The axis along the border is pulled inwards by the zero padding; the
    # other axis, far from any border, finds its centre.
    inside = [(2.3, 30.4), (45.3, 30.4), (20.4, 2.3), (20.4, 61.3)]
    hm = batch(*(gaussian_map(cx, cy) for cx, cy in inside))
    coords = np.asarray(heatmap_coords(hm, "dark")[0])[0]
    np.testing.assert_allclose(coords[:2, 1], [30.4, 30.4], atol=0.05)
    np.testing.assert_allclose(coords[2:, 0], [20.4, 20.4], atol=0.05)


def test_zero_flat_and_below_floor_maps_decode_to_finite_points():
    flat = np.full((H, W), 0.5, np.float32)
    # 1e-12 at (20, 30): every blurred value is under the 1e-10 floor, so the
    # log map is flat there, gradient and Hessian are zero, and the point stays.
    below_floor = spike_map({(20, 30): 1e-12})
    hm = batch(np.zeros((H, W), np.float32), flat, -flat, below_floor)
    coords, maxvals = heatmap_coords(hm, "dark")
    # Maxima that are not positive, and the first of equal maxima, are at (0, 0).
    np.testing.assert_array_equal(np.asarray(coords), [[[0, 0], [0, 0], [0, 0], [20, 30]]])
    np.testing.assert_array_equal(np.asarray(maxvals).ravel(), np.float32([0, 0.5, -0.5, 1e-12]))
    preds, _ = get_final_preds(hm, np.array([[100.0, 60.0]]), np.array([[0.48, 0.64]]),
                               decode="dark")
    assert np.isfinite(np.asarray(preds)).all()


def test_dark_returns_the_maxima_of_the_heatmaps_as_given():
    hm = batch(gaussian_map(20.0, 30.0, amplitude=0.8), gaussian_map(20.4, 30.5))
    _, dark = heatmap_coords(hm, "dark")
    _, argmax = heatmap_coords(hm, "argmax")
    np.testing.assert_array_equal(np.asarray(dark), np.asarray(argmax))
    assert float(dark[0, 0, 0]) == np.float32(0.8)


def test_decode_argmax_and_reference_are_post_process_false_and_true_bit_for_bit():
    rng = np.random.default_rng(7)
    hm = rng.uniform(0, 1, (3, 5, 16, 12)).astype(np.float32)
    center = rng.uniform(50, 500, (3, 2))
    scale = rng.uniform(0.5, 3, (3, 2))
    for decode, post_process in (("argmax", False), ("reference", True)):
        want = get_final_preds(hm, center, scale, post_process=post_process)
        for got in (get_final_preds(hm, center, scale, decode=decode),
                    get_final_preds(hm, center, scale, not post_process, decode=decode)):
            np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
            np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    np.testing.assert_array_equal(np.asarray(get_final_preds(hm, center, scale)[0]),
                                  np.asarray(get_final_preds(hm, center, scale,
                                                             decode="reference")[0]))


def test_dark_final_preds_map_back_to_the_image_as_the_other_decoders_do():
    # A 96 x 128 px box (scale (0.48, 0.64)) centred at (300, 200) on a 48 x 64
    # heatmap: heatmap (x, y) -> (300, 200) + 2 ((x, y) - (24, 32)).
    hm = batch(gaussian_map(30.4, 20.7))
    center, scale = np.array([[300.0, 200.0]]), np.array([[0.48, 0.64]])

    def map_back(xy):
        return np.array([300.0, 200.0]) + 2 * (np.asarray(xy) - [24.0, 32.0])

    argmax, _ = get_final_preds(hm, center, scale, decode="argmax")
    np.testing.assert_allclose(np.asarray(argmax)[0, 0], map_back([30.0, 21.0]), atol=1e-3)
    dark, _ = get_final_preds(hm, center, scale, decode="dark")
    coords, _ = heatmap_coords(hm, "dark")
    np.testing.assert_allclose(np.asarray(dark)[0, 0], map_back(np.asarray(coords)[0, 0]),
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(dark)[0, 0], [312.8, 177.4], atol=0.1)


def test_dark_of_48x17x64x48_gives_48x17x2_and_48x17x1_float32():
    hm = jax.ShapeDtypeStruct((48, 17, 64, 48), np.float32)
    boxes = jax.ShapeDtypeStruct((48, 2), np.float32)
    preds, maxvals = jax.eval_shape(lambda h, c, s: get_final_preds(h, c, s, decode="dark"),
                                    hm, boxes, boxes)
    coords, coord_maxvals = jax.eval_shape(lambda h: heatmap_coords(h, "dark"), hm)
    chex.assert_shape([preds, coords, maxvals, coord_maxvals],
                      [(48, 17, 2), (48, 17, 2), (48, 17, 1), (48, 17, 1)])
    chex.assert_type([preds, coords, maxvals, coord_maxvals], np.float32)


def test_dark_works_inside_jit():
    hm = batch(gaussian_map(30.4, 20.7), gaussian_map(12.73, 40.1))
    center, scale = np.array([[300.0, 200.0]]), np.array([[0.48, 0.64]])
    jitted = jax.jit(lambda h, c, s: get_final_preds(h, c, s, decode="dark", blur_kernel=11))
    np.testing.assert_allclose(np.asarray(jitted(hm, center, scale)[0]),
                               np.asarray(get_final_preds(hm, center, scale, decode="dark")[0]),
                               atol=1e-3)
    coords, _ = jax.jit(lambda h: heatmap_coords(h, "dark"))(hm)
    np.testing.assert_allclose(np.asarray(coords), [[[30.4, 20.7], [12.73, 40.1]]], atol=0.05)


def test_an_unknown_decoder_raises_listing_the_decoders():
    hm = batch(gaussian_map(20.0, 30.0))
    message = r"decode: expected one of \('argmax', 'reference', 'dark'\), got 'soft-argmax'"
    with pytest.raises(ValueError, match=message):
        heatmap_coords(hm, "soft-argmax")
    with pytest.raises(ValueError, match=message):
        get_final_preds(hm, BOX_CENTER, BOX_SCALE, decode="soft-argmax")


@pytest.mark.parametrize("blur_kernel", [10, 0, -3, 11.0])
def test_a_blur_kernel_that_is_not_an_odd_positive_size_raises_naming_it(blur_kernel):
    hm = batch(gaussian_map(20.0, 30.0))
    message = rf"blur_kernel: expected an odd kernel size >= 1 .*got {blur_kernel!r}$"
    with pytest.raises(ValueError, match=message):
        heatmap_coords(hm, "dark", blur_kernel=blur_kernel)
    with pytest.raises(ValueError, match=message):
        get_final_preds(hm, BOX_CENTER, BOX_SCALE, decode="dark", blur_kernel=blur_kernel)
