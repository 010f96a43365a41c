"""The input normalisation equals torchvision's ToTensor + Normalize bit for bit (needs torch).

torchvision is not required: its two transforms are spelled out with the torch
operations they perform (uint8 HWC -> CHW float32, ``div(255)``, then
``sub_(mean).div_(std)`` with float32 per-channel tensors).
"""

import numpy as np
import pytest

from hrnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from hrnet_jax.data.sample import normalize_image

torch = pytest.importorskip("torch")


def test_every_byte_value_in_every_channel_normalises_exactly_as_torchvision():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack(np.meshgrid(values, values[::-1], indexing="ij"), -1)  # (256, 256, 2)
    image = np.concatenate([image, image[..., :1] ^ 0x5A], -1)  # a third, different channel
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    expected = tensor.sub_(mean).div_(std).numpy()
    np.testing.assert_array_equal(normalize_image(image), expected)
