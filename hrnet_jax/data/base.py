"""The dataset interface every keypoint dataset implements, and its shared sample loading.

A dataset class owns everything about its data: where the files live and how
records are read (:meth:`JointsDataset.load_records`), its joints
(:attr:`JointsDataset.keypoints`), how predictions are scored
(:meth:`JointsDataset.evaluate`) and which score picks the best model
(:attr:`JointsDataset.headline_metric`). Classes are chosen by name from
``cfg.dataset.name`` through :mod:`hrnet_jax.data.registry`.
"""

from __future__ import annotations

import abc
import collections
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from hrnet_jax.data.keypoints import Keypoints, check_joint_count
from hrnet_jax.data.sample import AugmentParams, SampleSpec, make_sample
from hrnet_jax.images import BadImageError, read_image

logger = logging.getLogger(__name__)

Sample = tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def read_json(path: str, what: str, missing_hint: str = "") -> Any:
    """The JSON in ``path``; errors say what the file is (``what``) and where.

    Raises:
      FileNotFoundError: no such file (``missing_hint`` follows the message).
      ValueError: the file is not valid JSON.
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist{missing_hint}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path!r} is not valid JSON: {e}") from None


class JointsDataset(abc.ABC):
    """Records of people with joints, and the reference's per-sample transform.

    ``ds[i]`` is ``(input (3, H, W) float32, target (J, h, w) float32,
    target_weight (J, 1) float32, meta dict)``; in train mode the augmentation
    draws from a generator seeded by ``(seed, epoch, i)`` (``ds.load(i, epoch)``),
    so a sample is a pure function of its seed, epoch and index.

    A subclass sets :attr:`keypoints` and :attr:`headline_metric` and
    implements :meth:`load_records` and :meth:`evaluate`; :meth:`prepare`
    (generating a synthetic set, say) is optional.

    Args:
      root: dataset root.
      image_set: the split's name (``cfg.dataset.train_set`` / ``test_set``).
      is_train: augment (scale, rotation, flip, half body) as the reference.
      cfg: a :class:`hrnet_jax.config.Config` (model sizes, sigma, dataset
        factors, seed, test settings).
      skip_bad_images: instead of raising on an unreadable image, warn and hand
        back a sample with ``meta['valid'] = False`` (see :meth:`load`).
    """

    keypoints: ClassVar[Keypoints]
    # The evaluation entry that decides the best model (higher is better).
    headline_metric: ClassVar[str]
    # Says where the data goes and how to get it; appended to missing-file errors.
    help: ClassVar[str] = ""
    # Where the data is looked for when a command line names the dataset.
    default_root: ClassVar[str] = "data"

    def __init__(self, root: str, image_set: str, is_train: bool, cfg: Any, *,
                 skip_bad_images: bool = False) -> None:
        check_joint_count(self.keypoints, cfg.model.num_joints, type(self).__name__)
        if str(cfg.dataset.data_format).lower() == "zip":
            raise ValueError(
                f"dataset.data_format 'zip' (the reference's images inside zip archives) is "
                f"not read here: unpack the archives under {root!r} and set "
                "dataset.data_format=jpg")
        self.root = root
        self.image_set = image_set
        self.is_train = bool(is_train)
        self.cfg = cfg
        self.seed = int(cfg.seed)
        self.skip_bad_images = bool(skip_bad_images)
        self.spec = SampleSpec.from_config(cfg, self.keypoints.flip_pairs)
        self.augment = (AugmentParams.from_config(cfg, self.keypoints.upper_body_ids)
                        if self.is_train else None)
        self.db = self.load_records()

    # ------------------------------------------------------------------ to implement

    @classmethod
    def prepare(cls, cfg: Any) -> str:
        """Makes the data ready before any loader is built (e.g. generates it); returns the root."""
        return cfg.dataset.root

    @abc.abstractmethod
    def load_records(self) -> list[dict[str, Any]]:
        """The split's records: dicts with ``image`` (path), ``center`` (2,), ``scale`` (2,),
        ``joints_3d`` (J, 3), ``joints_3d_vis`` (J, 3), and optionally ``score``."""

    @abc.abstractmethod
    def evaluate(self, preds: np.ndarray, output_dir: str | None = None
                 ) -> collections.OrderedDict[str, Any] | None:
        """Scores ``preds`` (N, J, 3) (x, y in image pixels, score; one row per record,
        in record order); writes the dataset's prediction files into ``output_dir``
        when given. Returns the ordered table, or None where the split has no ground
        truth."""

    # ------------------------------------------------------------------ shared

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int) -> Sample:
        return self.load(index, epoch=0)

    def describe(self) -> str:
        """Where the records come from, for error messages."""
        return f"{type(self).__name__}({self.root!r}, {self.image_set!r})"

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        """The augmentation generator of one sample: PCG64 seeded by (seed, epoch, index)."""
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, int(epoch), int(index)])))

    def load(self, index: int, epoch: int = 0) -> Sample:
        """Sample ``index`` as seen in ``epoch``; ``meta`` also has ``index`` and ``valid``.

        With ``skip_bad_images``, an unreadable image gives an all-zero input,
        target and weight with ``meta['valid'] = False`` and a logged warning,
        so a loader can leave it out and count it; otherwise BadImageError.
        """
        if not 0 <= index < len(self.db):
            raise IndexError(f"index {index} out of range for {len(self.db)} records of "
                             f"{self.describe()}")
        record = self.db[index]
        try:
            # BGR as stored, as the reference reads it; make_sample reorders the crop.
            image = read_image(record["image"], "BGR", exif_orientation=False)
        except BadImageError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping record %d: %s", index, e)
            return self._blank(record, index)
        rng = self.rng(index, epoch) if self.is_train else None
        input_, target, target_weight, meta = make_sample(image, record, self.spec, self.augment, rng)
        meta["index"] = int(index)
        meta["valid"] = True
        return input_, target, target_weight, meta

    def _blank(self, record: Mapping[str, Any], index: int) -> Sample:
        w, h = self.spec.image_size
        hw, hh = self.spec.heatmap_size
        j = self.spec.num_joints
        meta = {
            "image": record["image"], "filename": record.get("filename", ""),
            "imgnum": record.get("imgnum", 0),
            "joints": np.array(record["joints_3d"]), "joints_vis": np.array(record["joints_3d_vis"]),
            "center": np.array(record["center"]), "scale": np.array(record["scale"]),
            "rotation": 0.0, "score": float(record.get("score", 1.0)), "index": int(index),
            "valid": False,
        }
        return (np.zeros((3, h, w), np.float32), np.zeros((j, hh, hw), np.float32),
                np.zeros((j, 1), np.float32), meta)
