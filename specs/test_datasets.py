"""Datasets chosen by name, and what each says about its joints.

``cfg.dataset.name`` picks a JointsDataset class: a built-in name ("mpii",
"coco", "synthetic", "synthetic_coco", any case), a name given to
``register_dataset``, or an import path "package.module:Class". Each class owns
its joints (names, flip pairs, upper body, skeleton, OKS sigmas), its headline
metric and its evaluation; a model whose joint count differs is refused.

MPII (16 joints): flip pairs (0,5),(1,4),(2,3),(10,15),(11,14),(12,13), upper
body 7..15, headline "Mean". COCO (17 joints): flip pairs (1,2),(3,4),...,(15,16),
upper body 0..10, lower body 11..16, headline "AP", sigmas the reference's
(.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
.89, .89) / 10.
"""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.data import registry
from hrnet_jax.data.base import JointsDataset
from hrnet_jax.data.coco import COCODataset
from hrnet_jax.data.keypoints import Keypoints
from hrnet_jax.data.mpii import MPIIDataset
from hrnet_jax.data.registry import (
    build_dataset,
    dataset_class,
    dataset_keypoints,
    dataset_names,
    register_dataset,
)
from hrnet_jax.data.synthetic import SyntheticMPIIDataset
from hrnet_jax.data.synthetic_coco import SyntheticCOCODataset

# A CrowdPose-like dataset: 14 joints in COCO's file format, its own sigmas.
CROWDPOSE_MODULE = textwrap.dedent('''
    from hrnet_jax.data.coco import COCODataset
    from hrnet_jax.data.keypoints import Keypoints

    NAMES = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
             "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
             "right_ankle", "head", "neck")
    SIGMAS = tuple(s / 10 for s in (.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89,
                                    .79, .79))


    class CrowdPoseLike(COCODataset):
        keypoints = Keypoints(
            joint_names=NAMES,
            flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
            upper_body_ids=(0, 1, 2, 3, 4, 5, 12, 13),
            skeleton=((12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (0, 6), (1, 7),
                      (6, 8), (8, 10), (7, 9), (9, 11)),
            sigmas=SIGMAS,
        )
        headline_metric = "AP"


    class NotADataset:
        pass
''')
CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89,
                             .79, .79]) / 10


@pytest.fixture
def crowdpose_module(tmp_path, monkeypatch):
    """The name of an importable module (in tmp_path) defining CrowdPoseLike and NotADataset."""
    name = "crowdpose_like_for_specs"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"{name}.py").write_text(CROWDPOSE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def no_registered_datasets(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTERED", {})


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "cls"), [
    ("mpii", MPIIDataset), ("MPII", MPIIDataset), ("coco", COCODataset), ("Coco", COCODataset),
    ("synthetic", SyntheticMPIIDataset), ("SYNTHETIC", SyntheticMPIIDataset),
    ("synthetic_coco", SyntheticCOCODataset), ("Synthetic_COCO", SyntheticCOCODataset),
])
def test_built_in_names_resolve_to_their_classes_in_any_case(name, cls):
    assert dataset_class(name) is cls


def test_an_unknown_name_is_an_error_listing_the_known_names():
    with pytest.raises(ValueError, match="'crowdpose'") as info:
        dataset_class("crowdpose")
    for known in ("mpii", "coco", "synthetic", "synthetic_coco"):
        assert f"'{known}'" in str(info.value)


def test_an_import_path_names_a_dataset_class_of_ones_own(crowdpose_module):
    cls = dataset_class(f"{crowdpose_module}:CrowdPoseLike")
    assert issubclass(cls, JointsDataset) and cls.__name__ == "CrowdPoseLike"
    assert cls.keypoints.num_joints == 14


def test_an_import_path_to_something_that_is_not_a_joints_dataset_is_an_error(crowdpose_module):
    with pytest.raises(ValueError, match="not a JointsDataset"):
        dataset_class(f"{crowdpose_module}:NotADataset")


def test_an_import_path_to_a_missing_module_or_class_is_an_error_naming_it(crowdpose_module):
    with pytest.raises(ValueError, match="no_such_module_for_specs"):
        dataset_class("no_such_module_for_specs:Anything")
    with pytest.raises(ValueError, match="'Missing'"):
        dataset_class(f"{crowdpose_module}:Missing")


def test_a_registered_name_is_available_in_any_case(no_registered_datasets):
    class MyPeople(COCODataset):
        pass

    assert register_dataset("my_people", MyPeople) is MyPeople
    assert dataset_class("My_People") is MyPeople
    assert "my_people" in dataset_names()


@pytest.mark.parametrize("name", ["coco", "MPII", "synthetic_coco"])
def test_register_dataset_refuses_a_built_in_name(no_registered_datasets, name):
    with pytest.raises(ValueError, match="built-in"):
        register_dataset(name, COCODataset)
    assert dataset_class(name) is not None and registry._REGISTERED == {}


def test_register_dataset_refuses_what_is_not_a_joints_dataset_class(no_registered_datasets):
    with pytest.raises(TypeError, match="JointsDataset"):
        register_dataset("plain", dict)


# --------------------------------------------------------------------------- facts


def test_mpii_has_16_joints_its_flip_pairs_upper_body_7_to_15_and_headline_mean():
    cls = dataset_class("mpii")
    kp = cls.keypoints
    assert kp.num_joints == 16
    assert kp.flip_pairs == ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
    assert kp.upper_body_ids == (7, 8, 9, 10, 11, 12, 13, 14, 15)
    assert kp.lower_body_ids == (0, 1, 2, 3, 4, 5, 6)
    assert cls.headline_metric == "Mean"


def test_coco_has_17_joints_its_flip_pairs_body_halves_sigmas_and_headline_ap():
    cls = dataset_class("coco")
    kp = cls.keypoints
    assert kp.num_joints == 17
    assert kp.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    assert kp.upper_body_ids == tuple(range(11))
    assert kp.lower_body_ids == (11, 12, 13, 14, 15, 16)
    np.testing.assert_allclose(kp.sigmas, [.026, .025, .025, .035, .035, .079, .079, .072, .072,
                                           .062, .062, .107, .107, .087, .087, .089, .089],
                               rtol=1e-15)
    assert cls.headline_metric == "AP"


def test_the_synthetic_sets_have_the_joints_of_their_layouts():
    assert dataset_class("synthetic").keypoints == dataset_class("mpii").keypoints
    assert dataset_class("synthetic_coco").keypoints == dataset_class("coco").keypoints


@pytest.mark.parametrize(("field", "kwargs"), [
    ("flip_pairs", {"flip_pairs": ((0, 3),)}),
    ("skeleton", {"skeleton": ((-1, 0),)}),
    ("upper_body_ids", {"upper_body_ids": (0, 3)}),
    ("sigmas", {"sigmas": (0.1, 0.1)}),
])
def test_keypoints_refuse_joint_indices_out_of_range_and_sigmas_of_the_wrong_length(field, kwargs):
    # Three joints: valid indices are 0, 1, 2 and sigmas need three values.
    args = {"joint_names": ("a", "b", "c"), "flip_pairs": (), "upper_body_ids": (), **kwargs}
    with pytest.raises(ValueError, match=field):
        Keypoints(**args)


def test_a_model_whose_joint_count_is_not_the_datasets_is_an_error_naming_both_counts():
    cfg = override(get_config("hrnet_w32"), {"dataset.name": "coco"})
    with pytest.raises(ValueError, match=r"model.num_joints is 16.*17 joints"):
        dataset_keypoints(cfg)


def test_dataset_keypoints_are_those_of_the_named_dataset():
    assert dataset_keypoints(get_config("hrnet_w32")) == dataset_class("mpii").keypoints
    assert dataset_keypoints(get_config("hrnet_w32_coco")) == dataset_class("coco").keypoints


# --------------------------------------------------------------------------- a dataset of one's own


def crowdpose_config(tmp_path, module):
    """hrnet_w32_coco on a tiny 14-joint COCO-format set of two images, one person each."""
    names = [f"j{k}" for k in range(14)]
    k = np.arange(14, dtype=np.float64)
    annotations = []
    for i, (x0, y0) in enumerate([(40.0, 50.0), (220.0, 120.0)], start=1):
        joints = np.stack([x0 + 3 * k, y0 + 4 * k, np.full(14, 2.0)], axis=-1)
        annotations.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                            "bbox": [x0 - 20, y0 - 20, 100, 200], "area": 20000.0,
                            "keypoints": joints.reshape(-1).tolist(), "num_keypoints": 14})
    root = tmp_path / "crowdpose"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (1, 2)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}],
    }))
    cfg = override(get_config("hrnet_w32_coco"), {
        "dataset.name": f"{module}:CrowdPoseLike", "dataset.root": str(root),
        "model.num_joints": 14})
    return cfg, annotations


def test_a_14_joint_dataset_named_by_import_path_builds_14_joint_records(tmp_path, crowdpose_module):
    cfg, annotations = crowdpose_config(tmp_path, crowdpose_module)
    ds = build_dataset(cfg, "valid")
    assert type(ds).__name__ == "CrowdPoseLike" and len(ds) == 2
    for record, ann in zip(ds.db, annotations, strict=True):
        assert record["joints_3d"].shape == (14, 3) and record["joints_3d_vis"].shape == (14, 3)
        np.testing.assert_array_equal(record["joints_3d"][:, :2],
                                      np.reshape(ann["keypoints"], (14, 3))[:, :2])
    assert dataset_keypoints(cfg) is type(ds).keypoints
    np.testing.assert_allclose(type(ds).keypoints.sigmas, CROWDPOSE_SIGMAS, rtol=1e-15)


def test_a_14_joint_dataset_runs_oks_nms_with_its_own_sigmas(tmp_path, crowdpose_module):
    cfg, annotations = crowdpose_config(tmp_path, crowdpose_module)
    ds = build_dataset(cfg, "valid")
    preds = np.stack([np.reshape(a["keypoints"], (14, 3)) for a in annotations])
    preds[..., 2] = 1.0
    # COCO's 17 sigmas could not score 14 joints; the dataset's own 14 do.
    results = ds.results(preds)
    assert [(r["image_id"], r["score"], len(r["keypoints"])) for r in results] == [(1, 1.0, 42),
                                                                                    (2, 1.0, 42)]


def test_coco_ap_of_a_14_joint_dataset_is_scored_with_its_own_sigmas(tmp_path, crowdpose_module):
    cfg, annotations = crowdpose_config(tmp_path, crowdpose_module)
    ds = build_dataset(cfg, "valid")
    preds = np.stack([np.reshape(a["keypoints"], (14, 3)) for a in annotations])
    preds[..., 2] = 1.0
    table = ds.evaluate(preds)
    assert table["AP"] == pytest.approx(1.0) and table["AR"] == pytest.approx(1.0)
    # COCO's 17 sigmas cannot score 14 joints: the refusal says so.
    from hrnet_jax.metrics import coco_evaluate

    with pytest.raises(ValueError, match=r"14 keypoints, but 17 OKS sigmas"):
        coco_evaluate(ds.results(preds), os.path.join(cfg.dataset.root, "annotations",
                                                      "person_keypoints_val2017.json"))
