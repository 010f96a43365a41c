"""COCO keypoints: OKS, (soft) OKS NMS, person rescoring and pycocotools' AP table.

These follow the reference's person post-processing (``lib/nms/nms.py`` and
``COCODataset.evaluate``): each person's score is rescored by its confident
joints, people are suppressed per image by OKS NMS (or soft OKS NMS), and
pycocotools' ``COCOeval`` scores the survivors. Everything runs on the host in
NumPy, as the reference does. Arithmetic stays in the inputs' precision where
the reference's does (float32 keypoint predictions give float32 joint
offsets), so that OKS values and the NMS decisions taken on them match.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ArrayLike = Any

# The 17 COCO keypoint falloffs (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles), as the reference and pycocotools spell them.
COCO_SIGMAS: np.ndarray = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
) / 10.0
COCO_SIGMAS.flags.writeable = False

# COCOeval.stats in order, under the reference's names ("Ap .5" spelt as there).
COCO_STATS_NAMES: tuple[str, ...] = (
    "AP", "Ap .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)",
)

# Soft NMS keeps at most this many people per image, COCOeval's keypoint maxDets.
_SOFT_NMS_MAX_DETECTIONS = 20
# Added to the mean area so that two zero-area people do not divide by zero.
_AREA_EPS = np.spacing(1)
_RESULT_KEYS = ("image_id", "category_id", "keypoints", "score")


# --------------------------------------------------------------------------- OKS


def _floating(x: ArrayLike) -> np.ndarray:
    """``x`` as a NumPy array, floating dtypes kept, anything else as float64."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_sigmas(sigmas: ArrayLike | None, num_joints: int) -> np.ndarray:
    """The per-joint sigmas (J,) float64: COCO_SIGMAS for None, else ``sigmas`` checked."""
    if sigmas is None:
        sigmas = COCO_SIGMAS
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.shape != (num_joints,):
        raise ValueError(f"sigmas: expected one per joint, shape (J,) = ({num_joints},), "
                         f"got shape {sigmas.shape}")
    return sigmas


def oks_iou(
    keypoints_a: ArrayLike,
    keypoints_b: ArrayLike,
    area_a: float,
    areas_b: ArrayLike,
    sigmas: ArrayLike | None = None,
    in_vis_thre: float | None = None,
) -> np.ndarray:
    """Object keypoint similarity of one person with each of M others.

    For joint j, ``e_j = d_j^2 / (2 sigma_j)^2 / ((area_a + area_b) / 2 + eps) / 2``
    with ``d_j`` the distance between the two people's joint j and
    ``eps = np.spacing(1)``; the OKS is the mean of ``exp(-e_j)`` over the
    counted joints. Without ``in_vis_thre`` every joint counts. With it, as in
    the reference (whose ``list(a > t) and list(b > t)`` is just its second
    list), a joint counts when its score in the *other* person (``b``) exceeds
    ``in_vis_thre``, whatever its score in ``a``. No counted joint gives 0.

    Differences and their squares are taken in the keypoints' dtype (float32
    predictions stay float32 there, as in the reference), the rest in float64.

    Args:
      keypoints_a: (J, 3) the person compared, as (x, y, score).
      keypoints_b: (M, J, 3) the others.
      area_a: the area of ``a``.
      areas_b: (M,) the areas of the others.
      sigmas: (J,) per-joint falloffs; None for COCO_SIGMAS.
      in_vis_thre: count only joints scored above this in ``b``; None counts all.

    Returns:
      (M,) float64 OKS values in [0, 1].
    """
    a, b = _floating(keypoints_a), _floating(keypoints_b)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"keypoints_a: expected shape (J, 3) as (x, y, score), got {a.shape}")
    num_joints = a.shape[0]
    if b.ndim != 3 or b.shape[1:] != (num_joints, 3):
        raise ValueError(f"keypoints_b: expected shape (M, J, 3) = (M, {num_joints}, 3) "
                         f"as keypoints_a's J, got {b.shape}")
    areas_b = np.asarray(areas_b, dtype=np.float64)
    if areas_b.shape != b.shape[:1]:
        raise ValueError(f"areas_b: expected shape (M,) = {b.shape[:1]}, got {areas_b.shape}")
    sigmas = _check_sigmas(sigmas, num_joints)

    dx = b[..., 0] - a[:, 0]
    dy = b[..., 1] - a[:, 1]
    mean_area = (np.float64(area_a) + areas_b) / 2 + _AREA_EPS  # (M,)
    e = (dx ** 2 + dy ** 2) / (sigmas * 2) ** 2 / mean_area[:, None] / 2  # (M, J)
    similarity = np.exp(-e)
    if in_vis_thre is None:
        return np.sum(similarity, axis=1) / num_joints if num_joints else np.zeros(len(b))
    # A Python float threshold compares in the scores' dtype (float32 for
    # predictions), as NumPy 1 and 2 both do for the reference's array comparison.
    counted = b[..., 2] > float(in_vis_thre)
    count = np.sum(counted, axis=1)
    total = np.sum(np.where(counted, similarity, 0.0), axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


# --------------------------------------------------------------------------- NMS


def _check_people(keypoints: ArrayLike, scores: ArrayLike, areas: ArrayLike
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs of the NMS functions as arrays, shapes checked; scores as float64."""
    keypoints = _floating(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints: expected shape (N, J, 3) as (x, y, score), got {keypoints.shape}")
    n = keypoints.shape[0]
    # The reference sorts float64 scores; the dtype decides how NumPy orders ties.
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores: expected shape (N,) = ({n},) as keypoints' N, got {scores.shape}")
    areas = np.asarray(areas, dtype=np.float64)
    if areas.shape != (n,):
        raise ValueError(f"areas: expected shape (N,) = ({n},) as keypoints' N, got {areas.shape}")
    return keypoints, scores, areas


def oks_nms(
    keypoints: ArrayLike,
    scores: ArrayLike,
    areas: ArrayLike,
    thr: float,
    sigmas: ArrayLike | None = None,
    in_vis_thre: float | None = None,
) -> list[int]:
    """Greedy OKS non-maximum suppression of the people of one image.

    People are visited in the order ``scores.argsort()[::-1]`` (NumPy's order
    for ties, as in the reference); each visited person is kept and removes
    the remaining ones whose OKS with it (:func:`oks_iou`) exceeds ``thr``;
    an OKS equal to ``thr`` survives.

    Args:
      keypoints: (N, J, 3) people as (x, y, score) per joint.
      scores: (N,) person scores, compared as float64.
      areas: (N,) person areas.
      thr: the OKS above which a lower-scored person is removed.
      sigmas: (J,) per-joint falloffs; None for COCO_SIGMAS.
      in_vis_thre: passed to :func:`oks_iou`; None counts every joint.

    Returns:
      Indices into the N people, in the order kept ([] for N = 0).
    """
    keypoints, scores, areas = _check_people(keypoints, scores, areas)
    _check_sigmas(sigmas, keypoints.shape[1])
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas, in_vis_thre)
        order = rest[overlap <= thr]
    return keep


def soft_oks_nms(
    keypoints: ArrayLike,
    scores: ArrayLike,
    areas: ArrayLike,
    thr: float,
    sigmas: ArrayLike | None = None,
    in_vis_thre: float | None = None,
) -> list[int]:
    """Soft OKS NMS of the people of one image: overlap lowers scores, removes no one.

    The best-scored remaining person is kept (order as ``argsort()[::-1]``,
    ties as NumPy gives them); every other remaining score is multiplied by
    ``exp(-oks^2 / thr)``, with ``oks`` its :func:`oks_iou` with the kept person,
    and the remaining people are re-sorted by ``argsort()[::-1]`` of the new
    scores. This repeats until no one remains or 20 are kept (COCOeval's
    keypoint ``maxDets``; the reference's fixed cap).

    Args:
      keypoints: (N, J, 3) people as (x, y, score) per joint.
      scores: (N,) person scores, computed on as float64.
      areas: (N,) person areas.
      thr: the Gaussian's width, > 0: a person at OKS ``sqrt(thr)`` keeps 1/e of its score.
      sigmas: (J,) per-joint falloffs; None for COCO_SIGMAS.
      in_vis_thre: passed to :func:`oks_iou`; None counts every joint.

    Returns:
      Indices into the N people in the order kept, at most 20 ([] for N = 0).
    """
    keypoints, scores, areas = _check_people(keypoints, scores, areas)
    _check_sigmas(sigmas, keypoints.shape[1])
    if not thr > 0:
        raise ValueError(f"thr: soft OKS NMS divides by it, expected > 0, got {thr}")
    order = scores.argsort()[::-1]
    remaining_scores = scores[order]
    keep = []
    while order.size > 0 and len(keep) < _SOFT_NMS_MAX_DETECTIONS:
        best, order = order[0], order[1:]
        keep.append(int(best))
        overlap = oks_iou(keypoints[best], keypoints[order], areas[best], areas[order], sigmas, in_vis_thre)
        remaining_scores = remaining_scores[1:] * np.exp(-overlap ** 2 / thr)
        resort = remaining_scores.argsort()[::-1]
        order, remaining_scores = order[resort], remaining_scores[resort]
    return keep


def rescore_by_keypoints(keypoints: ArrayLike, box_scores: ArrayLike, in_vis_thre: float) -> np.ndarray:
    """Person scores as the reference sets them before NMS: box score x joint confidence.

    The joint confidence is the mean of the joint scores strictly above
    ``in_vis_thre``. With no joint above it the reference's running sum stays
    at its initial 0 (it divides only by a nonzero count), so the person's
    score becomes 0 whatever its box score.

    Computed in float64 with the joint scores summed in joint order: the
    reference's loop of NumPy scalars, under the NumPy 1 it was written for,
    promotes float32 joint scores to float64 on the first addition.

    Args:
      keypoints: (N, J, 3) people as (x, y, score) per joint.
      box_scores: (N,) the detector's person scores (1 for ground-truth boxes).
      in_vis_thre: joints scored above this count.

    Returns:
      (N,) float64 scores.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints: expected shape (N, J, 3) as (x, y, score), got {keypoints.shape}")
    box_scores = np.asarray(box_scores, dtype=np.float64)
    if box_scores.shape != keypoints.shape[:1]:
        raise ValueError(f"box_scores: expected shape (N,) = {keypoints.shape[:1]} as keypoints' N, "
                         f"got {box_scores.shape}")
    joint_scores = keypoints[..., 2]
    if joint_scores.shape[1] == 0:
        return np.zeros(len(box_scores))
    above = joint_scores > in_vis_thre
    count = np.sum(above, axis=1)
    # cumsum adds left to right, as the reference's loop; the zeros change nothing.
    total = np.cumsum(np.where(above, joint_scores, 0.0), axis=1)[:, -1]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0) * box_scores


# --------------------------------------------------------------------------- COCOeval


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    """Silences pycocotools' prints unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _load_gt(gt: COCO | str | os.PathLike, verbose: bool) -> tuple[COCO, str]:
    """The ground truth as a COCO object, and how to name it in errors."""
    if isinstance(gt, COCO):
        return gt, "the ground-truth COCO object"
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        if not os.path.exists(path):
            raise FileNotFoundError(f"COCO ground truth {path!r} does not exist "
                                    "(expected a person_keypoints_*.json annotation file)")
        with _quiet(verbose):
            return COCO(path), path
    raise TypeError(f"gt: expected a pycocotools COCO object or a path to a COCO keypoints "
                    f"annotation JSON, got {type(gt)}")


def _person_category(coco_gt: COCO, source: str, sigmas: np.ndarray) -> tuple[int, int]:
    """The person category's id and its number of keypoints J (one per sigma), checked."""
    categories = coco_gt.dataset.get("categories", [])
    people = [c for c in categories if c.get("name") == "person"]
    if not people:
        raise ValueError(f"{source}: no 'person' category (categories: "
                         f"{[c.get('name') for c in categories]}); COCO keypoint AP scores people")
    person = people[0]
    num_joints = len(person.get("keypoints") or ())
    if num_joints == 0:
        raise ValueError(f"{source}: the 'person' category lists no 'keypoints' names; "
                         "expected a COCO keypoints annotation file")
    if num_joints != len(sigmas):
        raise ValueError(f"{source}: the 'person' category has {num_joints} keypoints, but "
                         f"{len(sigmas)} OKS sigmas were given (COCO's 17 unless sigmas= says "
                         "otherwise)")
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[person["id"]])):
        if "keypoints" not in ann or "num_keypoints" not in ann:
            raise ValueError(f"{source}: person annotation id {ann.get('id')} has no 'keypoints' "
                             "or 'num_keypoints'; expected a COCO keypoints annotation file")
    return person["id"], num_joints


def _load_results(results: Sequence[Mapping[str, Any]] | str | os.PathLike
                  ) -> tuple[list[dict[str, Any]], str]:
    """The results as a list of fresh dicts (COCO.loadRes writes into them), and their name."""
    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        if not os.path.exists(path):
            raise FileNotFoundError(f"COCO results {path!r} do not exist")
        with open(path) as f:
            loaded = json.load(f)
        if not isinstance(loaded, list):
            raise ValueError(f"{path}: expected a JSON list of keypoint results, got {type(loaded).__name__}")
        return [dict(r) if isinstance(r, Mapping) else r for r in loaded], path
    return [dict(r) if isinstance(r, Mapping) else r for r in results], "results"


def _check_results(results: list[Any], source: str, coco_gt: COCO, gt_source: str,
                   person_id: int, num_joints: int) -> None:
    if not results:
        raise ValueError(f"{source}: no detections; pycocotools cannot evaluate an empty result "
                         "list (AP would not be 0 but an error)")
    image_ids = set(coco_gt.getImgIds())
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"{source}[{i}]: expected a dict with keys {list(_RESULT_KEYS)}, "
                             f"got {type(result).__name__}")
        missing = [k for k in _RESULT_KEYS if k not in result]
        if missing:
            raise ValueError(f"{source}[{i}]: missing key(s) {missing}; expected {list(_RESULT_KEYS)}")
        if result["image_id"] not in image_ids:
            raise ValueError(f"{source}[{i}]: image_id {result['image_id']!r} is not an image of "
                             f"{gt_source}")
        if result["category_id"] != person_id:
            raise ValueError(f"{source}[{i}]: category_id {result['category_id']!r}, expected the "
                             f"person category {person_id} of {gt_source}")
        length = len(result["keypoints"])
        if length != 3 * num_joints:
            raise ValueError(f"{source}[{i}]: keypoints has {length} values, expected "
                             f"3 * J = {3 * num_joints} (a flat list of x, y, score per joint)")


def coco_evaluate(
    results: Sequence[Mapping[str, Any]] | str | os.PathLike,
    gt: COCO | str | os.PathLike,
    verbose: bool = False,
    sigmas: ArrayLike | None = None,
) -> collections.OrderedDict[str, float]:
    """COCO keypoint AP and AR of ``results``, as the reference's ``_do_python_keypoint_eval``.

    Runs pycocotools' ``COCOeval(gt, dt, 'keypoints')`` with
    ``params.useSegm = None``, then ``evaluate``, ``accumulate`` and
    ``summarize``. The caller's result dicts are not modified.

    Args:
      results: COCO keypoint results, each a dict with ``image_id``,
        ``category_id`` (the person category), ``keypoints`` (3J floats
        x, y, score) and ``score``; or a path to a JSON list of them.
      gt: a pycocotools ``COCO`` object or a path to a COCO keypoints
        annotation JSON with a 'person' category of 17 keypoints.
      verbose: let pycocotools print (its loading messages and the summary
        table); by default its output is swallowed.
      sigmas: (J,) per-joint OKS falloffs for a dataset other than COCO's 17
        joints (set as ``params.kpt_oks_sigmas``); None for COCO_SIGMAS.

    Returns:
      OrderedDict of the ten ``COCOeval.stats`` as floats, under
      COCO_STATS_NAMES in that order (-1 where pycocotools has nothing to
      score, e.g. no medium person in the ground truth).

    Raises:
      ValueError: no results; a result naming an image not in ``gt``, another
        category, or keypoints of the wrong length; ``gt`` without a 'person'
        category with one keypoint per sigma (17 for COCO).
    """
    coco_gt, gt_source = _load_gt(gt, verbose)
    sigmas = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    person_id, num_joints = _person_category(coco_gt, gt_source, sigmas)
    detections, source = _load_results(results)
    _check_results(detections, source, coco_gt, gt_source, person_id, num_joints)
    with _quiet(verbose):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
        evaluator.params.useSegm = None
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return collections.OrderedDict(
        (name, float(value)) for name, value in zip(COCO_STATS_NAMES, evaluator.stats, strict=True)
    )
