"""Times the jitted numerical core against per-sample, per-joint NumPy loops.

Measures, after compilation, the median milliseconds per call of
``generate_targets``, ``pck_accuracy`` and ``get_final_preds`` (inside ``jax.jit``,
and called on arrays, where it maps back in float64 on the host) on a batch of
heatmaps (default 48 x 16 x 64 x 64) and of ``mpii_evaluate`` on 2958 synthetic
records (the size of MPII's validation set). Next to each, a plain NumPy
version that loops over samples and joints the way the reference
implementation does, on the same inputs, shows the speed-up.

    python scripts/bench_functions.py [--batch 48] [--repeats 30]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import numpy as np

from hrnet_jax.decode import get_final_preds
from hrnet_jax.metrics import MPII_DATASET_JOINTS, mpii_evaluate, pck_accuracy
from hrnet_jax.targets import generate_targets
from hrnet_jax.transforms import affine_transform, get_affine_transform

IMAGE_SIZE, HEATMAP_SIZE, SIGMA = (256, 256), (64, 64), 2.0


# --------------------------------------------------------------------------- loop baselines


def loop_targets(joints, vis):
    """Per sample, per joint: build a (2 tmp + 1)^2 Gaussian patch and paste it in."""
    w, h = HEATMAP_SIZE
    stride = np.array(IMAGE_SIZE) / np.array(HEATMAP_SIZE)
    tmp = SIGMA * 3
    size = int(2 * tmp + 1)
    b, j = joints.shape[:2]
    target = np.zeros((b, j, h, w), np.float32)
    weight = vis[..., :1].astype(np.float32).copy()
    for n in range(b):
        for k in range(j):
            mx = int(joints[n, k, 0] / stride[0] + 0.5)
            my = int(joints[n, k, 1] / stride[1] + 0.5)
            x0, y0, x1, y1 = int(mx - tmp), int(my - tmp), int(mx + tmp + 1), int(my + tmp + 1)
            if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
                weight[n, k] = 0
                continue
            grid = np.arange(size, dtype=np.float32)
            patch = np.exp(-((grid[None] - size // 2) ** 2 + (grid[:, None] - size // 2) ** 2)
                           / (2 * SIGMA**2))
            if weight[n, k, 0] > 0.5:
                target[n, k, max(0, y0):min(y1, h), max(0, x0):min(x1, w)] = patch[
                    max(0, -y0):min(y1, h) - y0, max(0, -x0):min(x1, w) - x0]
    return target, weight


def loop_max_preds(hm):
    b, j, _, w = hm.shape
    flat = hm.reshape(b, j, -1)
    idx = np.argmax(flat, 2)
    maxvals = np.amax(flat, 2)[..., None]
    preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    return preds * (maxvals > 0), maxvals


def loop_accuracy(output, target, thr=0.5):
    b, j, h, w = output.shape
    pred, _ = loop_max_preds(output)
    gt, _ = loop_max_preds(target)
    norm = np.array([h, w]) / 10
    dists = np.full((j, b), -1.0)
    for n in range(b):
        for k in range(j):
            if gt[n, k, 0] > 1 and gt[n, k, 1] > 1:
                dists[k, n] = np.linalg.norm(pred[n, k] / norm - gt[n, k] / norm)
    acc = np.zeros(j + 1)
    total, cnt = 0.0, 0
    for k in range(j):
        counted = dists[k] != -1
        if counted.sum():
            acc[k + 1] = (dists[k][counted] < thr).mean()
            total += acc[k + 1]
            cnt += 1
        else:
            acc[k + 1] = -1
    acc[0] = total / cnt if cnt else 0
    return acc


def loop_final_preds(hm, center, scale):
    b, j, h, w = hm.shape
    coords, maxvals = loop_max_preds(hm)
    for n in range(b):
        for k in range(j):
            px, py = int(math.floor(coords[n, k, 0] + 0.5)), int(math.floor(coords[n, k, 1] + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                m = hm[n, k]
                diff = np.array([m[py, px + 1] - m[py, px - 1], m[py + 1, px] - m[py - 1, px]])
                coords[n, k] += np.sign(diff) * 0.25
    preds = np.zeros(coords.shape)
    for n in range(b):
        trans = get_affine_transform(center[n], scale[n], 0, (w, h), inv=True)
        for k in range(j):
            preds[n, k] = affine_transform(coords[n, k], trans)
    return preds, maxvals


def loop_mpii(preds, gt):
    """Vectorised over records, one pass per threshold of the curve."""
    pred = np.transpose(preds[:, :, :2] + 1.0, (1, 2, 0))
    visible = 1 - gt["jnt_missing"]
    err = np.linalg.norm(pred - gt["pos_gt_src"], axis=1)
    head = np.linalg.norm(gt["headboxes_src"][1] - gt["headboxes_src"][0], axis=0) * 0.6
    scaled = err / head * visible
    count = visible.sum(axis=1)
    curve = np.zeros((51, 16))
    for r, thr in enumerate(np.arange(0, 0.51, 0.01)):
        curve[r] = 100.0 * ((scaled <= thr) * visible).sum(axis=1) / count
    return curve


# --------------------------------------------------------------------------- timing


def median_ms(fn, repeats):
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def synthetic_mpii(rng, n):
    pos_gt = rng.uniform(50, 1200, (16, 2, n))
    tl = rng.uniform(50, 1100, (2, n))
    headboxes = np.stack([tl, tl + rng.uniform(20, 120, (2, n))])
    gt = {"dataset_joints": np.array([list(MPII_DATASET_JOINTS)], dtype=object),
          "jnt_missing": (rng.uniform(size=(16, n)) < 0.1).astype(np.uint8),
          "pos_gt_src": pos_gt, "headboxes_src": headboxes}
    preds = np.transpose(pos_gt, (2, 0, 1)) - 1 + rng.normal(scale=6.0, size=(n, 16, 2))
    return preds, gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--joints", type=int, default=16)
    parser.add_argument("--records", type=int, default=2958)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    b, j = args.batch, args.joints
    joints = rng.uniform(-20, 276, (b, j, 3))
    vis = (rng.uniform(size=(b, j, 3)) > 0.1).astype(np.float32)
    heatmaps = rng.normal(size=(b, j, 64, 64)).astype(np.float32)
    target = np.roll(heatmaps, 2, axis=3)
    center = rng.uniform(100, 1000, (b, 2))
    scale = rng.uniform(0.5, 5.0, (b, 2))
    # Device-resident inputs for the jitted functions: the timing excludes transfers.
    d_joints, d_vis, d_heatmaps, d_target, d_center, d_scale = jax.device_put(
        (joints, vis, heatmaps, target, center, scale))
    preds, gt = synthetic_mpii(rng, args.records)

    jit_final_preds = jax.jit(get_final_preds)
    rows = [
        ("generate_targets",
         lambda: generate_targets(d_joints, d_vis, image_size=IMAGE_SIZE,
                                  heatmap_size=HEATMAP_SIZE, sigma=SIGMA),
         lambda: loop_targets(joints, vis)),
        ("pck_accuracy", lambda: pck_accuracy(d_heatmaps, d_target),
         lambda: loop_accuracy(heatmaps, target)),
        ("get_final_preds (in jit)", lambda: jit_final_preds(d_heatmaps, d_center, d_scale),
         lambda: loop_final_preds(heatmaps, center, scale)),
        # Called on arrays it maps back in float64 on the host, as the reference does.
        ("get_final_preds (on arrays)", lambda: get_final_preds(d_heatmaps, center, scale),
         lambda: loop_final_preds(heatmaps, center, scale)),
        (f"mpii_evaluate ({args.records} records)", lambda: mpii_evaluate(preds, gt),
         lambda: loop_mpii(preds, gt)),
    ]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"batch {b} x {j} joints x 64 x 64, median of {args.repeats} runs after compilation")
    print(f"{'function':<34}{'ours ms':>10}{'loops ms':>11}{'speed-up':>10}")
    for name, ours, loops in rows:
        t_ours = median_ms(ours, args.repeats)
        t_loops = median_ms(loops, max(3, args.repeats // 3))
        print(f"{name:<34}{t_ours:>10.3f}{t_loops:>11.3f}{t_loops / t_ours:>9.1f}x")


if __name__ == "__main__":
    main()
