"""Person boxes to the crop centre and scale the network sees."""

import numpy as np

from hrnet_jax.crop import box_to_center_scale


def test_box_scale_is_rounded_to_float32_before_the_1_25_padding():
    # A 64 x 64 box for a square model: 64 / 200 = 0.32, which float32 holds as
    # 0.31999999284744263; times 1.25 in float32 that is 0.39999997615814209,
    # one float32 step below 0.4 (0.40000000596046448).
    center, scale = box_to_center_scale([[0, 0, 64, 64]], (64, 64))
    assert center.dtype == scale.dtype == np.float32
    np.testing.assert_array_equal(center, np.array([[32.0, 32.0]], np.float32))
    np.testing.assert_array_equal(scale, np.array([[0.39999997615814209] * 2], np.float32))
    assert scale[0, 0] != np.float32(0.4)
