"""A procedurally rendered MPII-format dataset for trying the pipeline without MPII.

Each image holds one cartoon person facing the camera (a face with eyes and a
mouth, so the person's right side is on the image's left, a cue that stays
consistent under horizontal flipping with left/right swapped): a kinematic
skeleton with the 16 MPII joints in a random pose, torso and limbs as filled
shapes with dark outlines in random clothing and skin colours (upper and
lower limb segments coloured differently so elbows and knees can be found),
on a cluttered background with distractor sticks and blobs. Occluders hide
some joints and others fall outside the image; both get ``joints_vis = 0``.

The files follow the MPII layout exactly (``images/``, ``annot/{train,valid,
test}.json``, ``annot/gt_valid.mat`` with head boxes of the rendered heads), so
the same reader, loader and PCKh evaluation run on it. Output is a pure
function of the seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from hrnet_jax.config import parse_image_size
from hrnet_jax.data.mpii import MPII_NUM_JOINTS, MPIIDataset

# MPII joint ids, for readability of the skeleton below.
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE, PELVIS, THORAX = range(8)
UPPER_NECK, HEAD_TOP, R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = range(8, 16)

_MARKER = ".synthetic_complete.json"
_PARTIAL = ".synthetic_partial"
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_SPLIT_IDS = {"train": 1, "valid": 2}


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _direction(angle_deg: float) -> np.ndarray:
    """Unit vector at ``angle_deg`` from straight down, positive towards image +x."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])


def sample_pose(rng: np.random.Generator, height: float) -> np.ndarray:
    """A random frontal pose: (16, 2) joints in pixels, pelvis at the origin, y down.

    The person faces the camera, so its right joints lie at negative x when upright.
    ``height`` is roughly the ankle-to-head-top distance of a standing pose.
    """
    j = np.zeros((MPII_NUM_JOINTS, 2))
    prop = rng.uniform(0.9, 1.1, size=6)  # body proportions
    lean = rng.normal(0.0, 8.0)
    up = -_direction(lean)
    side = np.array([-up[1], up[0]])  # perpendicular towards image +x (the person's left)
    j[PELVIS] = (0.0, 0.0)
    j[THORAX] = j[PELVIS] + up * 0.30 * height * prop[0]
    neck_dir = -_direction(lean + rng.normal(0.0, 10.0))
    j[UPPER_NECK] = j[THORAX] + neck_dir * 0.05 * height
    # A cartoon's large head: its box sets the PCKh tolerance, which then suits small heatmaps.
    j[HEAD_TOP] = j[UPPER_NECK] + neck_dir * 0.22 * height * prop[1]
    shoulder, hip = 0.11 * height * prop[2], 0.075 * height * prop[2]
    j[R_SHOULDER] = j[THORAX] - side * shoulder - up * 0.02 * height
    j[L_SHOULDER] = j[THORAX] + side * shoulder - up * 0.02 * height
    j[R_HIP] = j[PELVIS] - side * hip
    j[L_HIP] = j[PELVIS] + side * hip
    upper_arm, forearm = 0.16 * height * prop[3], 0.15 * height * prop[3]
    thigh, shin = 0.24 * height * prop[4], 0.23 * height * prop[4]
    for sign, (sho, elb, wri) in ((-1, (R_SHOULDER, R_ELBOW, R_WRIST)),
                                  (1, (L_SHOULDER, L_ELBOW, L_WRIST))):
        raise_angle = rng.uniform(-25.0, 170.0) if rng.random() < 0.8 else rng.uniform(-45.0, 0.0)
        bend = rng.uniform(-130.0, 130.0)
        a1 = lean + sign * raise_angle
        j[elb] = j[sho] + _direction(a1) * upper_arm
        j[wri] = j[elb] + _direction(a1 + sign * bend) * forearm
    for sign, (hip_id, knee, ankle) in ((-1, (R_HIP, R_KNEE, R_ANKLE)), (1, (L_HIP, L_KNEE, L_ANKLE))):
        spread = rng.uniform(-8.0, 35.0) if rng.random() < 0.85 else rng.uniform(35.0, 95.0)
        bend = rng.uniform(-70.0, 70.0)
        a1 = lean + sign * spread
        j[knee] = j[hip_id] + _direction(a1) * thigh
        j[ankle] = j[knee] + _direction(a1 + sign * bend) * shin
    return j


def _random_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


_SKIN = ((224, 196, 170), (190, 150, 120), (141, 104, 80), (96, 64, 45), (236, 213, 198), (170, 120, 90))


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered (height, width, 3) uint8 BGR background: smooth colour fields and random shapes."""
    low = rng.integers(0, 256, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-12, 13, size=(height // 4 + 1, width // 4 + 1)).astype(np.int16)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_NEAREST)
    image = np.clip(image.astype(np.int16) + noise[..., None], 0, 255).astype(np.uint8)
    size = min(width, height)
    for _ in range(int(rng.integers(8, 20))):
        kind = rng.integers(0, 4)
        color = _random_color(rng)
        c = rng.uniform((0, 0), (width, height))
        r = rng.uniform(0.03, 0.2) * size
        if kind == 0:
            cv2.rectangle(image, _pt(c - r), _pt(c + r * rng.uniform(0.3, 1.5, 2)), color, -1,
                          cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            cv2.circle(image, _pt(c), int(r * _ONE), color, -1, cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            d = rng.uniform(-1, 1, 2) * r * 2
            cv2.line(image, _pt(c), _pt(c + d), color, max(1, int(rng.uniform(0.005, 0.03) * size)),
                     cv2.LINE_AA, _SHIFT)
        else:
            pts = (c + rng.uniform(-r, r, size=(int(rng.integers(3, 6)), 2)))
            cv2.fillPoly(image, [np.round(pts * _ONE).astype(np.int32)], color, cv2.LINE_AA, _SHIFT)
    return image


def _distractors(rng: np.random.Generator, image: np.ndarray, person_height: float) -> None:
    """Limb-like sticks and blobs, so that not every elongated shape is a person."""
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        c = rng.uniform((0, 0), (w, h))
        d = _direction(rng.uniform(0, 360)) * rng.uniform(0.1, 0.25) * person_height
        thick = max(2, int(rng.uniform(0.03, 0.06) * person_height))
        cv2.line(image, _pt(c), _pt(c + d), (20, 20, 20), thick + 2, cv2.LINE_AA, _SHIFT)
        cv2.line(image, _pt(c), _pt(c + d), _random_color(rng), thick, cv2.LINE_AA, _SHIFT)


def _limb(image: np.ndarray, a: np.ndarray, b: np.ndarray, color, thickness: int,
          outline=(25, 25, 25)) -> None:
    cv2.line(image, _pt(a), _pt(b), outline, thickness + 3, cv2.LINE_AA, _SHIFT)
    cv2.line(image, _pt(a), _pt(b), color, thickness, cv2.LINE_AA, _SHIFT)


def draw_person(rng: np.random.Generator, image: np.ndarray, joints: np.ndarray, height: float) -> None:
    """Draws the person with ``joints`` (16, 2) image pixels onto ``image`` (BGR, in place)."""
    shirt, pants = _random_color(rng, 30, 256), _random_color(rng, 0, 200)
    skin = _SKIN[int(rng.integers(0, len(_SKIN)))]
    sleeve = shirt if rng.random() < 0.5 else _random_color(rng, 30, 256)
    shin_color = tuple(int(0.6 * v) for v in pants) if rng.random() < 0.5 else _random_color(rng)
    dark = (25, 25, 25)
    mitten = tuple(int(v) for v in rng.integers(0, 90, size=3))
    t_arm, t_fore = max(2, int(0.055 * height)), max(2, int(0.045 * height))
    t_thigh, t_shin = max(2, int(0.075 * height)), max(2, int(0.06 * height))
    # Legs first, torso over the hips, then arms over the torso, head last.
    for hip, knee, ankle in ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE)):
        _limb(image, joints[hip], joints[knee], pants, t_thigh)
        _limb(image, joints[knee], joints[ankle], shin_color, t_shin)
        cv2.circle(image, _pt(joints[ankle]), int(0.03 * height * _ONE), dark, -1, cv2.LINE_AA, _SHIFT)
    side = joints[L_SHOULDER] - joints[R_SHOULDER]
    torso = np.array([joints[R_SHOULDER] - 0.1 * side, joints[L_SHOULDER] + 0.1 * side,
                      joints[L_HIP] + 0.05 * side, joints[R_HIP] - 0.05 * side])
    cv2.fillPoly(image, [np.round(torso * _ONE).astype(np.int32)], shirt, cv2.LINE_AA, _SHIFT)
    cv2.polylines(image, [np.round(torso * _ONE).astype(np.int32)], True, dark, 2, cv2.LINE_AA, _SHIFT)
    _limb(image, joints[PELVIS], joints[THORAX], shirt, max(2, int(0.02 * height)))
    for sho, elb, wri in ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST)):
        _limb(image, joints[sho], joints[elb], sleeve, t_arm)
        _limb(image, joints[elb], joints[wri], skin, t_fore)
        # Mittens, as the shoes mark the ankles: a hand must stand out from its skin-coloured
        # forearm (and a face it passes) for the wrist to be found.
        cv2.circle(image, _pt(joints[wri]), int(0.035 * height * _ONE), mitten, -1, cv2.LINE_AA,
                   _SHIFT)
    _limb(image, joints[THORAX], joints[UPPER_NECK], skin, max(2, int(0.04 * height)))
    _draw_head(rng, image, joints[UPPER_NECK], joints[HEAD_TOP], skin)


def _draw_head(rng: np.random.Generator, image: np.ndarray, neck: np.ndarray, top: np.ndarray,
               skin) -> None:
    axis = top - neck
    length = float(np.hypot(*axis))
    up = axis / max(length, 1e-6)
    right = np.array([-up[1], up[0]])  # towards the person's left (image +x when upright)
    center = neck + 0.5 * axis
    angle = math.degrees(math.atan2(up[1], up[0])) + 90.0
    axes = (int(0.4 * length * _ONE), int(0.5 * length * _ONE))
    cv2.ellipse(image, _pt(center), (axes[0] + 2 * _ONE, axes[1] + 2 * _ONE), angle, 0, 360,
                (25, 25, 25), -1, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(image, _pt(center), axes, angle, 0, 360, skin, -1, cv2.LINE_AA, _SHIFT)
    hair = tuple(int(v) for v in rng.integers(0, 120, size=3))
    cv2.ellipse(image, _pt(center), axes, angle, 180, 360, hair, -1, cv2.LINE_AA, _SHIFT)
    eye_r = max(1, int(0.07 * length * _ONE))
    for s in (-1, 1):
        eye = center - 0.05 * length * up + s * 0.17 * length * right
        cv2.circle(image, _pt(eye), eye_r, (255, 255, 255), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(image, _pt(eye), max(1, eye_r // 2), (20, 20, 20), -1, cv2.LINE_AA, _SHIFT)
    mouth = center - 0.3 * length * up
    cv2.ellipse(image, _pt(mouth), (int(0.15 * length * _ONE), int(0.06 * length * _ONE)), angle,
                0, 180, (40, 40, 160), max(1, int(0.04 * length)), cv2.LINE_AA, _SHIFT)


def _occlude(rng: np.random.Generator, image: np.ndarray, joints: np.ndarray, height: float) -> np.ndarray:
    """Draws 0-2 occluders near random joints; returns the (16,) mask of joints they hide."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    count = int(rng.choice([0, 0, 0, 1, 2]))
    for _ in range(count):
        c = joints[int(rng.integers(0, MPII_NUM_JOINTS))] + rng.normal(0, 0.05 * height, 2)
        half = rng.uniform(0.06, 0.14, size=2) * height
        color = _random_color(rng)
        p1, p2 = _pt(c - half), _pt(c + half)
        cv2.rectangle(image, p1, p2, color, -1, cv2.LINE_AA, _SHIFT)
        cv2.rectangle(mask, p1, p2, 255, -1, cv2.LINE_8, _SHIFT)
    hidden = np.zeros(MPII_NUM_JOINTS, bool)
    xi, yi = np.round(joints[:, 0]).astype(int), np.round(joints[:, 1]).astype(int)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    hidden[inside] = mask[yi[inside], xi[inside]] > 0
    return hidden


def render_sample(rng: np.random.Generator, width: int, height: int, *,
                  with_mask: bool = False) -> tuple[np.ndarray, dict]:
    """One image and its annotation (0-based pixels).

    Returns:
      ``(image (height, width, 3) uint8 BGR, ann)`` with ``joints`` (16, 2),
      ``visible`` (16,) bool, ``center`` (2,) of the full joint box and
      ``scale`` (1.2 times its larger side, / 200), ``headbox`` ((x1, y1), (x2, y2)), and with ``with_mask``
      also ``person_mask`` (height, width) bool: the pixels the person changed.
    """
    size = min(width, height)
    for _ in range(50):
        person = rng.uniform(0.35, 0.9) * size
        local = sample_pose(rng, person)
        theta = math.radians(rng.normal(0.0, 15.0) if rng.random() < 0.9 else rng.uniform(-90, 90))
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        local = local @ rot.T
        lo, hi = local.min(axis=0), local.max(axis=0)
        box_center = rng.uniform((0.3 * width, 0.3 * height), (0.7 * width, 0.7 * height))
        joints = local - (lo + hi) / 2 + box_center
        in_image = ((joints[:, 0] >= 0) & (joints[:, 0] <= width - 1)
                    & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1))
        if in_image.sum() >= 10:
            break
    image = make_background(rng, width, height)
    _distractors(rng, image, person)
    before = image.copy() if with_mask else None
    draw_person(rng, image, joints, person)
    person_mask = (image != before).any(axis=-1) if with_mask else None
    hidden = _occlude(rng, image, joints, person)
    neck, top = joints[UPPER_NECK], joints[HEAD_TOP]
    head_center, head_len = (neck + top) / 2, float(np.hypot(*(top - neck)))
    lo, hi = joints.min(axis=0), joints.max(axis=0)
    # MPII's person scale leaves room around the body, and the reader pads it by 1.25
    # more: the crop then spans 1.5 times the joints' extent. A scale of the bare
    # extent put the head top and raised wrists on the crop's edge.
    scale = 1.2 * float(max(hi - lo)) / 200.0
    ann = {
        "joints": joints,
        "visible": in_image & ~hidden,
        "center": (lo + hi) / 2,
        "scale": scale,
        "headbox": np.stack([head_center - head_len / 2, head_center + head_len / 2]),
    }
    if with_mask:
        ann["person_mask"] = person_mask
    return image, ann


def _record(name: str, ann: dict) -> dict:
    """The MPII JSON record (1-based; centre raised by 15 * scale so the reader's shift undoes it)."""
    scale = round(ann["scale"], 4)
    center = ann["center"] + 1 - np.array([0.0, 15.0 * scale])
    joints = np.where(ann["visible"][:, None], ann["joints"] + 1, -1.0)
    return {
        "image": name,
        "center": [round(float(v), 3) for v in center],
        "scale": scale,
        "joints": [[round(float(x), 3), round(float(y), 3)] for x, y in joints],
        "joints_vis": [int(v) for v in ann["visible"]],
    }


def _render_and_write(job: tuple[int, str, int, int, int, str, int]) -> tuple[dict, dict]:
    """Renders sample ``i`` of ``split``, writes its JPEG and returns ``(record, ann)``."""
    seed, split, i, width, height, images_dir, jpeg_quality = job
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
    image, ann = render_sample(rng, width, height)
    name = f"{split}_{i:06d}.jpg"
    path = os.path.join(images_dir, name)
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
        raise OSError(f"could not write {path!r}")
    return _record(name, ann), ann


def default_processes(count: int) -> int:
    """Rendering processes for ``count`` images: every usable core, none below 64 images."""
    if count < 64:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, count // 32))


def map_in_processes(fn: Callable[[Any], Any], jobs: list, processes: int) -> list:
    """``[fn(job) for job in jobs]``, in ``processes`` spawned processes when more than one
    (spawned, not forked: the caller may hold JAX's threads). ``fn`` must be a
    module-level function, and each job depend on nothing but its own arguments."""
    if processes <= 1:
        return [fn(job) for job in jobs]
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        return list(pool.map(fn, jobs, chunksize=8))


def write_synthetic_mpii(root: str, *, num_train: int, num_valid: int, seed: int = 0,
                         image_size: int | Sequence[int] = 256, jpeg_quality: int = 92,
                         processes: int | None = None) -> str:
    """Renders a synthetic set into ``root`` in the MPII layout; returns ``root``.

    Writes ``images/{train,valid}_NNNNNN.jpg``, ``annot/train.json``,
    ``annot/valid.json``, ``annot/test.json`` (the valid images without joints,
    as MPII's test split) and ``annot/gt_valid.mat`` (``dataset_joints``,
    ``jnt_missing`` (16, N), ``pos_gt_src`` (16, 2, N) 1-based, ``headboxes_src``
    (2, 2, N)). Sample ``i`` of a split depends only on ``(seed, split, i)``.

    Args:
      root: output directory (created).
      num_train, num_valid: images per split (one person each).
      seed: generator seed.
      image_size: ``(width, height)`` or one side of a square, in pixels.
      jpeg_quality: JPEG quality 0-100.
      processes: rendering processes (None: one per core, for 64 images or
        more); the files do not depend on it.
    """
    import scipy.io

    from hrnet_jax.metrics import MPII_DATASET_JOINTS

    width, height = parse_image_size(image_size)
    if min(width, height) < 32:
        raise ValueError(f"image_size {image_size}: each side must be at least 32 pixels")
    images_dir, annot_dir = os.path.join(root, "images"), os.path.join(root, "annot")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(annot_dir, exist_ok=True)
    splits = {}
    total = int(num_train) + int(num_valid)
    workers = default_processes(total) if processes is None else int(processes)
    for split, count in (("train", num_train), ("valid", num_valid)):
        jobs = [(int(seed), split, i, width, height, images_dir, int(jpeg_quality))
                for i in range(int(count))]
        records = map_in_processes(_render_and_write, jobs, workers)
        splits[split] = records
        with open(os.path.join(annot_dir, f"{split}.json"), "w") as f:
            json.dump([r for r, _ in records], f)
    with open(os.path.join(annot_dir, "test.json"), "w") as f:
        json.dump([{k: r[k] for k in ("image", "center", "scale")} for r, _ in splits["valid"]], f)

    valid = splits["valid"]
    n = len(valid)
    pos = np.zeros((MPII_NUM_JOINTS, 2, n))
    missing = np.zeros((MPII_NUM_JOINTS, n))
    boxes = np.zeros((2, 2, n))
    for k, (record, ann) in enumerate(valid):
        pos[:, :, k] = np.asarray(record["joints"])
        missing[:, k] = 1 - np.asarray(record["joints_vis"])
        boxes[:, :, k] = ann["headbox"] + 1
    names = np.empty((1, MPII_NUM_JOINTS), dtype=object)
    names[0, :] = list(MPII_DATASET_JOINTS)
    scipy.io.savemat(os.path.join(annot_dir, "gt_valid.mat"), {
        "dataset_joints": names, "jnt_missing": missing, "pos_gt_src": pos, "headboxes_src": boxes,
    })
    return root


def ensure_synthetic_mpii(root: str, *, num_train: int = 2000, num_valid: int = 500, seed: int = 0,
                          image_size: int | Sequence[int] = 256, processes: int | None = None
                          ) -> str:
    """Generates the synthetic set into ``root`` once and reuses it afterwards
    (``processes``: as :func:`write_synthetic_mpii`'s, not part of the parameters).

    A completion marker holding the parameters is written last: a generation
    that was killed half-way, or one made with other parameters, is redone
    (``root/images`` and ``root/annot`` are replaced). Returns ``root``.
    """
    params = {"num_train": int(num_train), "num_valid": int(num_valid), "seed": int(seed),
              "image_size": list(parse_image_size(image_size)), "version": 4}
    return ensure_generated(root, params, ("images", "annot"), lambda: write_synthetic_mpii(
        root, num_train=num_train, num_valid=num_valid, seed=seed, image_size=image_size,
        processes=processes))


def generation_settings(cfg: Any) -> dict[str, Any]:
    """What a generated set's ``ensure_*`` function takes from the config: the
    ``dataset.synthetic_*`` sizes and the seed."""
    d = cfg.dataset
    return {"num_train": d.synthetic_num_train, "num_valid": d.synthetic_num_valid,
            "seed": cfg.seed, "image_size": tuple(d.synthetic_image_size)}


def ensure_generated(root: str, params: dict[str, Any], subdirs: Sequence[str],
                     write: Any) -> str:
    """Runs ``write()`` to fill ``root`` unless a completion marker there holds ``params``.

    The marker is written last, so a generation killed half-way, or one made
    with other parameters, is redone (``subdirs`` are replaced). A root whose
    ``subdirs`` exist without a marker or partial flag is not ours: refused.
    """
    marker = os.path.join(root, _MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                if json.load(f) == params:
                    return root
        except (OSError, json.JSONDecodeError):
            pass
        os.remove(marker)
        open(os.path.join(root, _PARTIAL), "w").close()
    occupied = any(os.path.exists(os.path.join(root, sub)) for sub in subdirs)
    if occupied and not os.path.exists(os.path.join(root, _PARTIAL)):
        raise FileExistsError(f"{root!r} holds {' or '.join(f'{s}/' for s in subdirs)} but is not "
                              "a generated synthetic set; refusing to overwrite it (choose "
                              "another root)")
    os.makedirs(root, exist_ok=True)
    open(os.path.join(root, _PARTIAL), "w").close()
    for sub in subdirs:
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    write()
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump(params, f)
    os.replace(tmp, marker)
    os.remove(os.path.join(root, _PARTIAL))
    return root


class SyntheticMPIIDataset(MPIIDataset):
    """The generated MPII-format set (``dataset.name = "synthetic"``): MPII's reader,
    joints and PCKh table on images made once into ``cfg.dataset.root`` by
    :func:`ensure_synthetic_mpii` (``dataset.synthetic_num_train``,
    ``synthetic_num_valid``, ``synthetic_image_size`` and ``seed``)."""

    help = "Generated by scripts/make_synthetic_mpii.py, or by training with --dataset synthetic."
    default_root = "data/synthetic_mpii"

    @classmethod
    def prepare(cls, cfg: Any) -> str:
        return ensure_synthetic_mpii(cfg.dataset.root, **generation_settings(cfg))
