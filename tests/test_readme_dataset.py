"""README's worked example of a COCO-format dataset of one's own (CrowdPose, 14 joints) runs
as written: its file is taken from README, and a CrowdPose-layout set is made from the
generated COCO-format one."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from conftest import TINY_OVERRIDES
from hrnet_jax.config import get_config, override
from hrnet_jax.data import build_dataset, write_synthetic_coco
from hrnet_jax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CrowdPose's 14 joints from COCO's 17: shoulders to ankles (COCO 5-16), the head (the
# nose stands in) and the neck (midway between the shoulders).
_BODY = list(range(5, 17))


def readme_example() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    match = re.search(r"```python\n(# crowdpose\.py.*?)```", text, re.S)
    assert match, "README lost its CrowdPose example"
    return match.group(1)


def crowdpose_layout(coco_root: str, root: str) -> None:
    """The generated COCO-format set rewritten in CrowdPose's layout and joints."""
    os.makedirs(os.path.join(root, "json"))
    os.makedirs(os.path.join(root, "images"))
    for coco_set, split in (("train2017", "trainval"), ("val2017", "val")):
        with open(os.path.join(coco_root, "annotations", f"person_keypoints_{coco_set}.json")) as f:
            data = json.load(f)
        for image in data["images"]:
            shutil.copy(os.path.join(coco_root, "images", coco_set, f"{image['id']:012d}.jpg"),
                        os.path.join(root, "images", image["file_name"]))
        for ann in data["annotations"]:
            k = np.reshape(ann["keypoints"], (17, 3))
            neck = np.zeros(3)
            if k[5, 2] > 0 and k[6, 2] > 0:
                neck = np.array([*(k[5, :2] + k[6, :2]) / 2, min(k[5, 2], k[6, 2])])
            joints = np.concatenate([k[_BODY], k[[0]], neck[None]])
            ann["keypoints"] = joints.reshape(-1).tolist()
            ann["num_keypoints"] = int(np.sum(joints[:, 2] > 0))
        data["categories"][0]["keypoints"] = [f"j{i}" for i in range(14)]
        with open(os.path.join(root, "json", f"crowdpose_{split}.json"), "w") as f:
            json.dump(data, f)


@pytest.fixture(scope="module")
def crowdpose(tmp_path_factory):
    base = tmp_path_factory.mktemp("crowdpose_example")
    module_dir = base / "module"
    module_dir.mkdir()
    (module_dir / "crowdpose.py").write_text(readme_example())
    sys.path.insert(0, str(module_dir))
    coco_root = write_synthetic_coco(str(base / "coco"), num_train=8, num_valid=4, seed=2,
                                     image_size=(160, 128))
    root = str(base / "crowdpose")
    crowdpose_layout(coco_root, root)
    cfg = override(get_config("hrnet_w8_coco"), [
        *TINY_OVERRIDES, "model.image_size=64,96", "model.heatmap_size=16,24",
        "model.num_joints=14", "dataset.name=crowdpose:CrowdPose", f"dataset.root={root}",
        "dataset.train_set=trainval", "dataset.test_set=val", "workers=0",
        "train.batch_size_per_device=4", "test.batch_size_per_device=4", "train.end_epoch=1"])
    yield cfg
    sys.path.remove(str(module_dir))
    sys.modules.pop("crowdpose", None)


def test_the_readme_crowdpose_dataset_scores_perfect_predictions_ap_1(crowdpose):
    dataset = build_dataset(crowdpose, "valid")
    assert type(dataset).__name__ == "CrowdPose" and dataset.db
    assert all(r["image"].startswith(os.path.join(crowdpose.dataset.root, "images"))
               for r in dataset.db)
    preds = np.stack([np.concatenate([r["joints_3d"][:, :2], np.ones((14, 1))], axis=1)
                      for r in dataset.db])
    table = dataset.evaluate(preds)
    assert table["AP"] == pytest.approx(1.0)


def test_the_readme_crowdpose_dataset_trains_with_its_own_joints(crowdpose, tmp_path):
    result = train(crowdpose, str(tmp_path / "run"), max_steps=2, show_progress=False)
    assert result.step == 2 and result.last_evaluation.headline == "AP"
    assert result.last_evaluation.preds.shape[1:] == (14, 3)
