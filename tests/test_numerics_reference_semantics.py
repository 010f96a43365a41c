"""The vectorised numerics against plain loop versions of the reference semantics.

Each ``loop_*`` function below walks samples and joints one at a time, following
the rules stated in the project's specification (truncating ``int``, window
tests, argmax ties, the PCK normalisation, ...). Random and awkward inputs
(joints off the map, zero and negative heatmaps, ties) are fed to both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrnet_jax import decode, losses, metrics, targets, transforms
from hrnet_jax.data.mpii import MPII_KEYPOINTS

# --------------------------------------------------------------------------- loop versions


def loop_target(joints, vis, image_size, heatmap_size, sigma):
    w, h = heatmap_size
    num = len(joints)
    out = np.zeros((num, h, w), np.float32)
    weight = np.zeros((num, 1), np.float32)
    half = sigma * 3
    for k in range(num):
        weight[k, 0] = vis[k]
        cx = int(joints[k][0] / (image_size[0] / w) + 0.5)
        cy = int(joints[k][1] / (image_size[1] / h) + 0.5)
        x_lo, y_lo = int(cx - half), int(cy - half)
        x_hi, y_hi = int(cx + half + 1), int(cy + half + 1)
        if x_lo >= w or y_lo >= h or x_hi < 0 or y_hi < 0:
            weight[k, 0] = 0
            continue
        if weight[k, 0] <= 0.5:
            continue
        peak = (2 * half + 1) // 2
        for yy in range(max(0, y_lo), min(y_hi, h)):
            for xx in range(max(0, x_lo), min(x_hi, w)):
                d2 = np.float32((xx - x_lo - peak) ** 2 + (yy - y_lo - peak) ** 2)
                out[k, yy, xx] = np.exp(-d2 / np.float32(2 * sigma**2))
    return out, weight


def loop_max_preds(hm):
    b, j, h, w = hm.shape
    preds = np.zeros((b, j, 2), np.float32)
    maxvals = np.zeros((b, j, 1), hm.dtype)
    for n in range(b):
        for k in range(j):
            best, best_i = -np.inf, 0
            for i, v in enumerate(hm[n, k].ravel()):
                if v > best:  # strict: the first maximum wins
                    best, best_i = v, i
            maxvals[n, k, 0] = best
            if best > 0:
                preds[n, k] = (best_i % w, best_i // w)
    return preds, maxvals


def loop_accuracy(output, target, thr):
    _, j, h, w = output.shape
    pred, _ = loop_max_preds(output)
    gt, _ = loop_max_preds(target)
    acc = np.zeros(j + 1)
    total, cnt = 0.0, 0
    for k in range(j):
        good = seen = 0
        for n in range(output.shape[0]):
            if gt[n, k, 0] > 1 and gt[n, k, 1] > 1:
                seen += 1
                dx = (pred[n, k, 0] - gt[n, k, 0]) / (h / 10)
                dy = (pred[n, k, 1] - gt[n, k, 1]) / (w / 10)
                good += math.hypot(dx, dy) < thr
        acc[k + 1] = good / seen if seen else -1
        if seen:
            total += acc[k + 1]
            cnt += 1
    acc[0] = total / cnt if cnt else 0
    return acc, acc[0], cnt, pred


def loop_final_preds(hm, center, scale, post_process):
    b, j, h, w = hm.shape
    coords, maxvals = loop_max_preds(hm)
    out = np.zeros((b, j, 2))
    for n in range(b):
        factor = scale[n][0] * 200.0 / w  # the crop is a similarity fixed by the width
        for k in range(j):
            x, y = float(coords[n, k, 0]), float(coords[n, k, 1])
            px, py = math.floor(x + 0.5), math.floor(y + 0.5)
            if post_process and 1 < px < w - 1 and 1 < py < h - 1:
                m = hm[n, k]
                x += 0.25 * np.sign(m[py, px + 1] - m[py, px - 1])
                y += 0.25 * np.sign(m[py + 1, px] - m[py - 1, px])
            out[n, k] = (center[n][0] + (x - w / 2) * factor, center[n][1] + (y - h / 2) * factor)
    return out, maxvals


def loop_mse(output, target, weight, use_weight):
    b, j = output.shape[:2]
    total = 0.0
    per = np.zeros((b, j))
    for n in range(b):
        for k in range(j):
            wk = weight[n, k, 0] if use_weight else 1.0
            per[n, k] = 0.5 * np.mean((output[n, k] * wk - target[n, k] * wk) ** 2)
    for k in range(j):
        total += per[:, k].mean()
    return total / j, per


def loop_ohkm(output, target, weight, use_weight, topk):
    _, per = loop_mse(output, target, weight, use_weight)
    return np.mean([sum(sorted(row)[-topk:]) / topk for row in per])


# --------------------------------------------------------------------------- comparisons


@pytest.mark.parametrize("sigma", [2, 1.5, 1])
def test_generate_target_matches_loop_version_on_awkward_joints(sigma):
    rng = np.random.default_rng(0)
    image_size, heatmap_size = (192, 256), (48, 64)
    joints = np.concatenate([
        rng.uniform(-60, 260, (20, 2)),  # many off the map, some negative
        np.array([[-3.0, -3.0], [-1.9, 5.0], [191.0, 255.0], [-40.0, 8.0], [1e6, 3.0]]),
    ])
    vis = np.concatenate([rng.choice([0.0, 1.0, 0.4, 0.7], 20), np.ones(5)])
    want_t, want_w = loop_target(joints, vis, image_size, heatmap_size, sigma)
    for impl in (targets.generate_target_np, targets.generate_target):
        got_t, got_w = impl(np.column_stack([joints, vis]), vis[:, None],
                            image_size=image_size, heatmap_size=heatmap_size, sigma=sigma)
        np.testing.assert_array_equal(np.asarray(got_w), want_w)
        np.testing.assert_allclose(np.asarray(got_t), want_t, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(
        targets.generate_target_np(joints, vis, image_size=image_size,
                                   heatmap_size=heatmap_size, sigma=sigma)[0], want_t)


def test_generate_targets_batch_matches_per_sample_numpy():
    rng = np.random.default_rng(1)
    joints = rng.uniform(-20, 140, (3, 5, 2))
    vis = rng.choice([0.0, 1.0], (3, 5, 3))
    got_t, got_w = targets.generate_targets(joints, vis, image_size=(128, 128),
                                            heatmap_size=(32, 32), sigma=2)
    for n in range(3):
        want_t, want_w = loop_target(joints[n], vis[n, :, 0], (128, 128), (32, 32), 2)
        np.testing.assert_allclose(np.asarray(got_t[n]), want_t, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(got_w[n]), want_w)


def _awkward_heatmaps(rng, shape):
    hm = rng.normal(size=shape).astype(np.float32)
    hm[0, 0] = 0.0  # all zero: maximum not positive
    hm[0, 1] = -np.abs(hm[0, 1]) - 0.1  # all negative
    hm[1, 0] = 0.0
    hm[1, 0, 3, 4] = hm[1, 0, 3, 6] = hm[1, 0, 5, 2] = 2.0  # a three-way tie
    hm[1, 1] = np.round(hm[1, 1])  # many ties, flat neighbours
    hm[2, 2] = 0.0
    hm[2, 2, 0, 0] = 1.0  # corner maximum, no refinement
    hm[2, 3] = 0.0
    hm[2, 3, 1, 5] = 1.0  # row 1: the reference does not refine it either
    return hm


def test_get_max_preds_matches_loop_version_including_ties_and_nonpositive_maps():
    rng = np.random.default_rng(2)
    hm = _awkward_heatmaps(rng, (4, 5, 12, 10))
    want_p, want_m = loop_max_preds(hm)
    got_p, got_m = metrics.get_max_preds(hm)
    np.testing.assert_array_equal(np.asarray(got_p), want_p)
    np.testing.assert_array_equal(np.asarray(got_m), want_m)


@pytest.mark.parametrize("thr", [0.5, 0.25])
def test_pck_accuracy_matches_loop_version(thr):
    rng = np.random.default_rng(3)
    shape = (6, 5, 16, 12)  # non-square, so the (h, w) pairing with (x, y) matters
    output = _awkward_heatmaps(rng, shape)
    target = np.roll(output, shift=(1, 2), axis=(2, 3)) + 0.3 * rng.normal(size=shape).astype(
        np.float32)
    target[:, 4] = 0.0  # a joint never counted: -1
    acc, avg, cnt, pred = metrics.pck_accuracy(output, target, thr)
    want_acc, want_avg, want_cnt, want_pred = loop_accuracy(output, target, thr)
    np.testing.assert_allclose(np.asarray(acc), want_acc, rtol=1e-6)
    assert float(avg) == pytest.approx(want_avg, rel=1e-6)
    assert int(cnt) == want_cnt == 4
    np.testing.assert_array_equal(np.asarray(pred), want_pred)


@pytest.mark.parametrize("post_process", [True, False])
def test_get_final_preds_matches_loop_version(post_process):
    rng = np.random.default_rng(4)
    hm = _awkward_heatmaps(rng, (4, 5, 12, 10))
    center = rng.uniform(50, 900, (4, 2))
    scale = rng.uniform(0.4, 5.0, (4, 2))
    preds, maxvals = decode.get_final_preds(hm, center, scale, post_process=post_process)
    want_p, want_m = loop_final_preds(hm, center, scale, post_process)
    np.testing.assert_allclose(np.asarray(preds), want_p, rtol=1e-6, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(maxvals), want_m)


@pytest.mark.parametrize("use_weight", [True, False])
def test_losses_match_loop_versions(use_weight):
    rng = np.random.default_rng(5)
    output = rng.normal(size=(3, 6, 8, 8)).astype(np.float32)
    target = rng.uniform(size=(3, 6, 8, 8)).astype(np.float32)
    weight = rng.choice([0.0, 1.0, 0.5], (3, 6, 1)).astype(np.float32)
    want, _ = loop_mse(output, target, weight, use_weight)
    got = losses.joints_mse_loss(output, target, weight, use_weight)
    assert float(got) == pytest.approx(want, rel=1e-5)
    for k in (1, 4, 6):
        got = losses.joints_ohkm_mse_loss(output, target, weight, use_weight, topk=k)
        assert float(got) == pytest.approx(loop_ohkm(output, target, weight, use_weight, k),
                                           rel=1e-5)


def test_flip_back_matches_loop_version_on_mpii_pairs():
    rng = np.random.default_rng(6)
    hm = rng.normal(size=(2, 16, 4, 5)).astype(np.float32)
    want = np.empty_like(hm)
    partner = {a: b for a, b in MPII_KEYPOINTS.flip_pairs} | {b: a for a, b in MPII_KEYPOINTS.flip_pairs}
    for n in range(2):
        for k in range(16):
            for x in range(5):
                want[n, k, :, x] = hm[n, partner.get(k, k), :, 4 - x]
    np.testing.assert_array_equal(np.asarray(decode.flip_back(hm, MPII_KEYPOINTS.flip_pairs)), want)
    shifted = want.copy()
    shifted[..., 1:] = want[..., :-1]
    fused = decode.fuse_flip(hm, hm, MPII_KEYPOINTS.flip_pairs, shift=True)
    np.testing.assert_allclose(np.asarray(fused), (hm + shifted) * 0.5, rtol=1e-6)


def test_transform_preds_numpy_path_matches_closed_form_similarity():
    rng = np.random.default_rng(7)
    coords = rng.uniform(0, 64, (7, 2))
    # Values exact in float32: the reference rounds its three points to float32.
    center, scale = np.array([512.25, 301.75]), np.array([2.75, 3.125])
    got = transforms.transform_preds(coords, center, scale, (64, 48))
    factor = 2.75 * 200 / 64
    want = np.stack([center[0] + (coords[:, 0] - 32) * factor,
                     center[1] + (coords[:, 1] - 24) * factor], axis=-1)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def loop_pckh_table(preds, jnt_missing, pos_gt, headboxes):
    """Per-joint PCKh at each threshold with explicit loops; joint order of MPII."""
    n = preds.shape[0]
    thresholds = np.arange(0, 0.5 + 0.01, 0.01)
    out = np.zeros((len(thresholds) + 1, 16))
    for k in range(16):
        errs, seen = [], 0
        for i in range(n):
            if jnt_missing[k, i]:
                continue
            seen += 1
            head = 0.6 * math.dist(headboxes[0, :, i], headboxes[1, :, i])
            errs.append(math.dist(preds[i, k, :2] + 1, pos_gt[k, :, i]) / head)
        for t, thr in enumerate([*thresholds, 0.5]):
            out[t, k] = 100.0 * sum(e <= thr for e in errs) / seen if seen else math.nan
    return thresholds, out


def test_mpii_evaluate_matches_loop_version_on_random_records():
    rng = np.random.default_rng(8)
    n = 40
    pos_gt = rng.uniform(50, 600, (16, 2, n))
    tl = rng.uniform(50, 500, (2, n))
    headboxes = np.stack([tl, tl + rng.uniform(20, 80, (2, n))])
    jnt_missing = (rng.uniform(size=(16, n)) < 0.2).astype(np.uint8)
    preds = np.transpose(pos_gt, (2, 0, 1)) - 1 + rng.normal(scale=8.0, size=(n, 16, 2))
    gt = {"dataset_joints": np.array([list(metrics.MPII_DATASET_JOINTS)], dtype=object),
          "jnt_missing": jnt_missing, "pos_gt_src": pos_gt, "headboxes_src": headboxes}
    res = metrics.mpii_evaluate(preds, gt)
    thresholds, table = loop_pckh_table(preds, jnt_missing, pos_gt, headboxes)
    at_half = table[-1]
    counts = (1 - jnt_missing).sum(axis=1).astype(float)
    keep = [k for k in range(16) if k not in (6, 7)]

    def mean(row):
        return sum(row[k] * counts[k] for k in keep) / counts[keep].sum()

    assert res["Head"] == pytest.approx(at_half[9], abs=1e-9)
    assert res["Shoulder"] == pytest.approx((at_half[12] + at_half[13]) / 2, abs=1e-9)
    assert res["Ankle"] == pytest.approx((at_half[0] + at_half[5]) / 2, abs=1e-9)
    assert res["Mean"] == pytest.approx(mean(at_half), abs=1e-9)
    assert res["Mean@0.1"] == pytest.approx(mean(table[11]), abs=1e-9)
    assert res["Mean@0.1(true)"] == pytest.approx(mean(table[10]), abs=1e-9)
    np.testing.assert_allclose(res["PCKh curve"], [mean(table[t]) for t in range(51)],
                               atol=1e-9)
    np.testing.assert_allclose(res["PCKh thresholds"], thresholds)
    # The jitted per-joint function agrees at 0.5 (in float32).
    got = metrics.pckh(preds + 1, np.transpose(pos_gt, (2, 0, 1)),
                       np.transpose(headboxes, (2, 0, 1)), 1 - jnt_missing.T)
    np.testing.assert_allclose(np.asarray(got), at_half, rtol=1e-5)
