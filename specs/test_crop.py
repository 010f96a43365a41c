"""Person crops: one warp and one normalisation for training, evaluation and inference.

Contract: ``warp_crop(image, center, scale, rotation, image_size)`` is
``cv2.warpAffine`` (bilinear, black border) with
``get_affine_transform(center, scale, rotation, image_size)``;
``normalize_image`` is ``(x / 255 - mean) / std`` in float32, channels first;
``crop_inputs`` stacks both for each person. The data pipeline's input of a
record is, bit for bit, ``crop_inputs`` of the RGB image at the record's
centre and scale.
"""

import numpy as np
import pytest

from hrnet_jax import crop, images
from hrnet_jax.config import get_config, override
from hrnet_jax.crop import crop_inputs, normalize_image, warp_crop
from hrnet_jax.data.mpii import MPII_KEYPOINTS
from hrnet_jax.data.sample import SampleSpec, make_sample


def test_a_box_the_size_of_the_window_is_cut_out_unchanged():
    # Box side 0.32 * 200 = 64 px onto a 64 px window, centred (50, 40): crop
    # pixel (x, y) is image pixel (x + 18, y + 8), whole pixels, no blending.
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    window = warp_crop(image, np.array([50.0, 40.0]), np.array([0.32, 0.32]), 0.0, (64, 64))
    assert window.dtype == np.uint8 and window.shape == (64, 64, 3)
    np.testing.assert_array_equal(window, image[8:72, 18:82])


def test_outside_the_image_the_crop_is_black():
    image = np.full((20, 20, 3), 200, np.uint8)
    window = warp_crop(image, np.array([0.0, 0.0]), np.array([0.1, 0.1]), 0.0, (20, 20))
    assert not window[:9, :9].any() and (window[11:, 11:] == 200).all()


def test_normalisation_is_per_channel_imagenet_statistics_channels_first():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    x = normalize_image(image)
    assert x.dtype == np.float32 and x.shape == (3, 2, 3) and x.flags.c_contiguous
    np.testing.assert_allclose(x[0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(x[1], (0 - 0.456) / 0.224, rtol=1e-6)
    np.testing.assert_allclose(x[2], (0 - 0.406) / 0.225, rtol=1e-6)


def test_every_byte_value_normalises_to_the_float32_arithmetic_bit_for_bit():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], values ^ 0x5A], -1)[None]  # (1, 256, 3)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    expected = ((image.astype(np.float32) / np.float32(255) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_array_equal(normalize_image(image), expected)
    np.testing.assert_array_equal(normalize_image(image[:, ::-1]), expected[:, :, ::-1])


def test_normalisation_refuses_anything_but_an_hw3_uint8_image():
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 image"):
            normalize_image(bad)


def test_inference_crops_are_the_data_pipelines_evaluation_inputs_bit_for_bit():
    cfg = override(get_config("hrnet_w8"), ["model.image_size=64,48", "model.heatmap_size=16,12"])
    spec = SampleSpec.from_config(cfg, MPII_KEYPOINTS.flip_pairs)
    bgr = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    center, scale = np.array([61.3, 47.9]), np.array([0.41, 0.55])
    record = {"image": "x.jpg", "center": center, "scale": scale,
              "joints_3d": np.zeros((16, 3)), "joints_3d_vis": np.zeros((16, 3))}
    input_, *_ = make_sample(bgr, record, spec, None, None)
    inputs = crop_inputs(rgb, center[None], scale[None], (64, 48))
    assert inputs.shape == (1, 3, 48, 64) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs[0], input_)


def test_no_people_give_an_empty_batch():
    inputs = crop_inputs(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 2)), np.zeros((0, 2)),
                         (64, 48))
    assert inputs.shape == (0, 3, 48, 64) and inputs.dtype == np.float32


def test_each_name_has_one_home_and_is_importable_where_it_was():
    from hrnet_jax import data, inference
    from hrnet_jax.data import base, mpii, sample

    assert inference.box_to_center_scale is crop.box_to_center_scale
    assert inference.check_boxes is crop.check_boxes
    assert inference.crop_inputs is crop.crop_inputs
    assert inference.BOX_PADDING is crop.BOX_PADDING
    assert sample.normalize_image is crop.normalize_image
    assert inference.read_image is images.read_image
    assert data.BadImageError is base.BadImageError is mpii.BadImageError is images.BadImageError
    assert issubclass(images.BadImageError, ValueError)
