"""Converted weights give the PyTorch network's heatmaps (needs torch).

The PyTorch network here is a small independent HRNet written from the
architecture's description (state_dict names as the reference's), not the
reference code: it checks padding, BatchNorm, upsampling, the fuse order and
the weight conversion end to end.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import convert
from hrnet_jax.config import StageConfig, get_config
from hrnet_jax.models import build_model

torch = pytest.importorskip("torch")
nn = torch.nn

EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}


def conv_bn(cin, cout, k, stride, relu):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class Residual(nn.Module):
    def __init__(self, kind, cin, planes):
        super().__init__()
        self.kind = kind
        cout = planes * EXPANSION[kind]
        if kind == "BASIC":
            shapes = [(cin, planes, 3), (planes, planes, 3)]
        else:
            shapes = [(cin, planes, 1), (planes, planes, 3), (planes, cout, 1)]
        for n, (a, b, k) in enumerate(shapes, start=1):
            setattr(self, f"conv{n}", nn.Conv2d(a, b, k, 1, k // 2, bias=False))
            setattr(self, f"bn{n}", nn.BatchNorm2d(b))
        self.depth = len(shapes)
        self.downsample = conv_bn(cin, cout, 1, 1, False) if cin != cout else None

    def forward(self, x):
        y = x
        for n in range(1, self.depth + 1):
            y = getattr(self, f"bn{n}")(getattr(self, f"conv{n}")(y))
            if n < self.depth:
                y = torch.relu(y)
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + skip)


class Fusion(nn.Module):
    def __init__(self, stage, widths, all_outputs):
        super().__init__()
        n = stage.num_branches
        self.branches = nn.ModuleList(
            nn.Sequential(*[Residual(stage.block, widths[i] if b == 0 else
                                     stage.num_channels[i] * EXPANSION[stage.block],
                                     stage.num_channels[i])
                            for b in range(stage.num_blocks[i])])
            for i in range(n))
        out = [c * EXPANSION[stage.block] for c in stage.num_channels]
        rows = []
        for i in range(n if all_outputs else 1):
            row = []
            for j in range(n):
                if j == i:
                    row.append(None)
                elif j > i:
                    row.append(nn.Sequential(nn.Conv2d(out[j], out[i], 1, bias=False),
                                             nn.BatchNorm2d(out[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i),
                                                         mode="nearest")))
                else:
                    steps = [conv_bn(out[j], out[i] if s == i - j - 1 else out[j], 3, 2,
                                     s < i - j - 1) for s in range(i - j)]
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows) if n > 1 else None

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        outs = []
        for row in self.fuse_layers:
            total = 0
            for layer, x in zip(row, xs, strict=True):
                total = total + (x if layer is None else layer(x))
            outs.append(torch.relu(total))
        return outs


class TorchHRNet(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(*[Residual("BOTTLENECK", 64 if k == 0 else 256, 64)
                                      for k in range(4)])
        previous = [256]
        stages = (m.stage2, m.stage3, m.stage4)
        for s, stage in enumerate(stages, start=2):
            widths = [c * EXPANSION[stage.block] for c in stage.num_channels]
            transition = []
            for i, w in enumerate(widths):
                if i < len(previous):
                    transition.append(None if w == previous[i] else
                                      conv_bn(previous[i], w, 3, 1, True))
                else:
                    count = i + 1 - len(previous)
                    transition.append(nn.Sequential(*[
                        conv_bn(previous[-1], w if c == count - 1 else previous[-1], 3, 2, True)
                        for c in range(count)]))
            setattr(self, f"transition{s - 1}", nn.ModuleList(transition))
            setattr(self, f"stage{s}", nn.Sequential(*[
                Fusion(stage, widths, not (s == 4 and k == stage.num_modules - 1))
                for k in range(stage.num_modules)]))
            previous = widths
        self.final_layer = nn.Conv2d(previous[0], m.num_joints, m.final_conv_kernel, 1,
                                     m.final_conv_kernel // 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [xs[i] if t is None else t(xs[min(i, len(xs) - 1)])
                  for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return self.final_layer(xs[0])


def _config(image_size, final_conv_kernel=1, block="BASIC"):
    cfg = get_config("hrnet_w8")
    model = dataclasses.replace(
        cfg.model, image_size=image_size,
        heatmap_size=(image_size[0] // 4, image_size[1] // 4),
        # A BOTTLENECK stage2 keeps the BASIC widths 8, 16 after expansion by 4.
        stage2=StageConfig(1, 2, (2, 1), (8, 16) if block == "BASIC" else (2, 4), block=block),
        stage3=StageConfig(2, 3, (1, 1, 1), (8, 16, 32)),
        stage4=StageConfig(2, 4, (1, 1, 1, 1), (8, 16, 32, 64)),
        final_conv_kernel=final_conv_kernel,
    )
    return dataclasses.replace(cfg, model=model)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if tensor.ndim == 4:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("running_var", ".weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(("image_size", "final_conv_kernel", "block"),
                         [((64, 64), 1, "BASIC"), ((64, 96), 3, "BOTTLENECK")])
def test_converted_weights_reproduce_pytorch_eval_heatmaps(image_size, final_conv_kernel, block):
    cfg = _config(image_size, final_conv_kernel, block)
    torch_model = TorchHRNet(cfg.model).eval()
    _randomise(torch_model, seed=0)
    state_dict = torch_model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state_dict.items()] == [
        (e.name, e.shape) for e in convert.reference_layout(cfg)]

    width, height = image_size
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()

    variables = convert.torch_state_dict_to_variables(state_dict, cfg)  # tensors accepted
    model = build_model(cfg)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    assert out.shape == expected.shape == (2, cfg.model.num_joints, height // 4, width // 4)
    error = _relative_error(out, expected)
    print(f"eval parity {image_size} k={final_conv_kernel} {block}: max relative error {error:.2e}")
    assert error < 1e-4


def test_train_mode_matches_pytorch_output_and_running_statistics():
    cfg = _config((64, 64))
    torch_model = TorchHRNet(cfg.model).train()
    _randomise(torch_model, seed=1)
    variables = convert.torch_state_dict_to_variables(torch_model.state_dict(), cfg)
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    model = build_model(cfg)
    with jax.default_matmul_precision("highest"):
        out, updates = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    error = _relative_error(np.asarray(out), expected)
    print(f"train-mode parity: max relative error {error:.2e}")
    assert error < 1e-4
    after = convert.torch_state_dict_to_variables(torch_model.state_dict(), cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.device_get(updates["batch_stats"]), after["batch_stats"])


def test_read_torch_checkpoint_unwraps_state_dict_and_dataparallel_prefix(tmp_path):
    cfg = _config((64, 64))
    torch_model = TorchHRNet(cfg.model)
    _randomise(torch_model, seed=2)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v
                                          for k, v in torch_model.state_dict().items()}}
    path = tmp_path / "checkpoint.pth"
    torch.save(wrapped, path)
    state_dict = convert.read_torch_checkpoint(path)
    assert list(state_dict) == list(torch_model.state_dict())
    assert all(isinstance(v, np.ndarray) for v in state_dict.values())
    np.testing.assert_array_equal(state_dict["conv1.weight"],
                                  torch_model.conv1.weight.detach().numpy())
    variables = convert.torch_state_dict_to_variables(state_dict, cfg)
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)


def test_exported_variables_load_into_pytorch_and_give_the_same_heatmaps():
    cfg = _config((64, 64))
    model = build_model(cfg)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64))))
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(np.float32) * 0.2,
                             abstract)
    torch_model = TorchHRNet(cfg.model).eval()
    torch_model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                                 convert.variables_to_torch_state_dict(variables, cfg).items()})
    x = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    assert _relative_error(out, expected) < 1e-4
