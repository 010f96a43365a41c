"""Bad input: every failure names the file or record at fault and says what was expected."""

import json
import logging
import os

import cv2
import numpy as np
import pytest

from hrnet_jax.config import get_config, override
from hrnet_jax.data import BadImageError, MPIIDataset, build_loader


def config(root):
    return override(get_config("hrnet_quickstart"), [
        f"dataset.root={root}", "model.image_size=[32, 32]", "model.heatmap_size=[16, 16]"])


def record(name, joints=16):
    return {"image": name, "center": [20.0, 20.0], "scale": 0.2,
            "joints": [[10.0, 10.0]] * joints, "joints_vis": [1] * 16}


def make_root(tmp_path, records, image_set="train", images=("good.jpg",)):
    os.makedirs(tmp_path / "images", exist_ok=True)
    os.makedirs(tmp_path / "annot", exist_ok=True)
    for name in images:
        cv2.imwrite(str(tmp_path / "images" / name), np.full((40, 40, 3), 128, np.uint8))
    with open(tmp_path / "annot" / f"{image_set}.json", "w") as f:
        json.dump(records, f)
    return str(tmp_path)


def test_a_missing_root_names_it_the_layout_how_to_get_mpii_and_the_synthetic_option(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        MPIIDataset(missing, "train", True, config(missing))
    text = str(info.value)
    for part in (missing, "images/*.jpg", "annot/{train,valid,test}.json", "gt_valid.mat",
                 "human-pose.mpi-inf.mpg.de", "deep-high-resolution-net.pytorch", "OneDrive",
                 "--dataset synthetic"):
        assert part in text, part


def test_a_missing_annotation_file_is_named(tmp_path):
    root = make_root(tmp_path, [record("good.jpg")], image_set="train")
    with pytest.raises(FileNotFoundError, match=r"annot/valid\.json.*does not exist"):
        build_loader(config(root), "valid", batch_size=1)


def test_an_annotation_file_that_is_not_json_is_named(tmp_path):
    root = make_root(tmp_path, [])
    (tmp_path / "annot" / "train.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"train\.json.*not valid JSON"):
        MPIIDataset(root, "train", True, config(root))


def test_a_record_with_the_wrong_joint_count_is_named(tmp_path):
    root = make_root(tmp_path, [record("good.jpg"), record("good.jpg", joints=14)])
    with pytest.raises(ValueError, match=r"train\.json record 1 \(image 'good\.jpg'\).*\(14, 2\).*\(16, 2\)"):
        MPIIDataset(root, "train", True, config(root))


def test_a_record_without_joints_outside_the_test_split_is_named(tmp_path):
    bad = {"image": "good.jpg", "center": [20.0, 20.0], "scale": 0.2}
    root = make_root(tmp_path, [bad], image_set="valid")
    with pytest.raises(ValueError, match=r"valid\.json record 0.*missing key 'joints'"):
        MPIIDataset(root, "valid", False, config(root))


def test_the_references_zip_data_format_is_refused_with_what_to_do(tmp_path):
    root = make_root(tmp_path, [record("good.jpg")])
    with pytest.raises(ValueError, match=r"dataset\.data_format 'zip'.*unpack"):
        MPIIDataset(root, "train", True, override(config(root), ["dataset.data_format=zip"]))
    assert len(MPIIDataset(root, "train", True, override(config(root), ["dataset.data_format=png"]))) == 1


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"plain text"])
def test_an_unreadable_image_raises_an_error_naming_the_file(tmp_path, content):
    root = make_root(tmp_path, [record("bad.jpg")])
    (tmp_path / "images" / "bad.jpg").write_bytes(content)
    ds = MPIIDataset(root, "train", True, config(root))
    with pytest.raises(BadImageError, match=r"images/bad\.jpg"):
        ds[0]


def test_a_missing_image_raises_an_error_naming_the_file(tmp_path):
    root = make_root(tmp_path, [record("absent.jpg")], image_set="valid")
    ds = MPIIDataset(root, "valid", False, config(root))
    with pytest.raises(BadImageError, match=r"images/absent\.jpg.*does not exist"):
        ds[0]


def test_inference_reads_images_with_the_same_reader_and_error(tmp_path):
    from hrnet_jax.inference import read_image

    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImageError, match=r"bad\.jpg.*could not be read"):
        read_image(str(tmp_path / "bad.jpg"))
    with pytest.raises(BadImageError, match=r"absent\.jpg.*does not exist"):
        read_image(tmp_path / "absent.jpg")


def test_skipping_bad_images_warns_marks_them_invalid_and_counts_them(tmp_path, caplog):
    root = make_root(tmp_path, [record("good.jpg"), record("bad.jpg"), record("good.jpg")],
                     image_set="valid")
    (tmp_path / "images" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImageError):
        with build_loader(config(root), "valid", batch_size=4) as loader:
            list(loader)
    with caplog.at_level(logging.WARNING):
        with build_loader(config(root), "valid", batch_size=4, skip_bad_images=True) as loader:
            (input_, _, weight, meta), = list(loader)
            assert loader.num_bad_images == 1
    np.testing.assert_array_equal(meta["valid"], [True, False, True, False])
    assert not weight[1].any() and not input_[1].any()
    assert "bad.jpg" in caplog.text
