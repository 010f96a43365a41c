"""The network as a file that runs without this package: StableHLO and ONNX.

Both hold the eval-mode network, variables baked in as constants, mapping
``images`` (N, 3, H, W) float32 (crops as :func:`~hrnet_jax.crop.crop_inputs`
makes them) to ``heatmaps`` (N, J, H/4, W/4) float32; N is symbolic (any batch
from one file) unless ``batch_size`` fixes it. With ``flip_test`` the file
computes PoseEstimator's flip test, :func:`hrnet_jax.forward.predict_heatmaps`:
the network on the images and their mirror images in one batch, fused as
:func:`hrnet_jax.decode.fuse_flip` does with the flip pairs of
``cfg.dataset.name`` and ``cfg.test.shift_heatmap``.

* StableHLO (:func:`to_stablehlo`): ``jax.export`` serialised; running it
  needs JAX and flatbuffers only, and gives the jitted JAX model's heatmaps
  bit for bit on the CPU.
* ONNX (:func:`to_onnx`): converted by jax2onnx, opset :data:`DEFAULT_OPSET`;
  each BatchNorm folded to one Mul and one Add after its Conv (onnxruntime and
  TensorRT fuse them into it), nearest upsampling as Reshape, Expand,
  Reshape (no Resize); within about 1e-6 of the JAX heatmaps' range.

Both need the ``export`` extra (``pip install -e ".[export]"``). The network
is exported unrolled (``model.scan = "none"``): ONNX has no counterpart of
``lax.scan`` that TensorRT handles well, and a file should not depend on the
backend of the machine that wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax import config as config_lib
from hrnet_jax.config import Config
from hrnet_jax.data.registry import dataset_keypoints
from hrnet_jax.forward import predict_heatmaps
from hrnet_jax.models import build_model
from hrnet_jax.models.layers import BatchNorm
from hrnet_jax.models.variables import check_variables

__all__ = ["DEFAULT_OPSET", "FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportCheck",
           "ExportedModel", "MissingDependencyError", "check_export", "heatmaps_function",
           "jax_heatmaps", "load_exported", "load_onnx", "load_stablehlo", "to_onnx",
           "to_stablehlo"]

INPUT_NAME = "images"
OUTPUT_NAME = "heatmaps"
FORMATS = ("onnx", "stablehlo")
# Opset 17 is read by onnxruntime 1.13+ and TensorRT 8.6+, and has every operator the graphs use.
DEFAULT_OPSET = 17


class MissingDependencyError(ImportError):
    """A package of the ``export`` extra is not installed."""


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module!r}, which is not installed "
            f"({e}); install the export extra: pip install -e \".[export]\"") from None


def _export_config(cfg: Config) -> Config:
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a Config, got {type(cfg).__name__}")
    return config_lib.override(cfg, {"model.scan": "none"})


def _input_shape(cfg: Config, batch: int | str) -> tuple[int | str, int, int, int]:
    width, height = (int(v) for v in cfg.model.image_size)
    return (batch, 3, height, width)


def _static_shape(shape: Any) -> tuple[int | None, ...]:
    # Symbolic dimensions (jax's "N", onnxruntime's "N") become None.
    return tuple(d if isinstance(d, int) else None for d in shape)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")


def _network(variables: Any, cfg: Config, flip_test: bool
             ) -> tuple[Any, dict[str, Any], tuple[tuple[int, int], ...], bool]:
    export_cfg = _export_config(cfg)
    check_variables(variables, export_cfg)
    constants = {c: jax.tree.map(np.asarray, jax.device_get(dict(variables[c])))
                 for c in ("params", "batch_stats")}
    flip_pairs = tuple(tuple(int(j) for j in p) for p in dataset_keypoints(cfg).flip_pairs) \
        if flip_test else ()
    return build_model(export_cfg), constants, flip_pairs, bool(cfg.test.shift_heatmap)


def heatmaps_function(variables: Any, cfg: Config, *, flip_test: bool = False
                      ) -> Callable[[jax.Array], jax.Array]:
    """The function :func:`to_stablehlo` exports: images (N, 3, H, W) -> heatmaps (N, J, H/4, W/4).

    PoseEstimator's :func:`hrnet_jax.forward.predict_heatmaps` with
    ``variables`` closed over as constants. They pass through
    ``lax.optimization_barrier``: without it XLA folds BatchNorm's arithmetic
    on them at compile time, in another order than at run time, and the
    heatmaps drift by about 1e-6 of their range from those of the network
    with variables as arguments; behind it they are the same bit for bit.
    """
    model, constants, flip_pairs, shift = _network(variables, cfg, flip_test)

    def heatmaps(images: jax.Array) -> jax.Array:
        return predict_heatmaps(model, jax.lax.optimization_barrier(constants), images,
                                flip_test=bool(flip_test), flip_pairs=flip_pairs, shift=shift)

    return heatmaps


def _folded_batchnorm(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """A ``flax.linen.intercept_methods`` interceptor: eval-mode BatchNorm as ``x * a + b``.

    ``a = scale / sqrt(var + epsilon)`` and ``b = bias - mean * a``, computed
    in float64 on the host, are float32 constants: one Mul and one Add right
    after the convolution, which ONNX runtimes fuse into it. (As
    ``(x - mean) * (rsqrt(var + eps) * scale) + bias`` the Sub keeps
    onnxruntime from fusing: 1.7x slower on the CPU.)
    """
    module = context.module
    train = kwargs.get("train", args[1] if len(args) > 1 else None)
    if not isinstance(module, BatchNorm) or context.method_name != "__call__" or train is not False:
        return next_fun(*args, **kwargs)
    scale, bias = (np.asarray(module.get_variable("params", n), np.float64) for n in ("scale", "bias"))
    mean, var = (np.asarray(module.get_variable("batch_stats", n), np.float64)
                 for n in ("mean", "var"))
    a = scale / np.sqrt(var + module.epsilon)
    b = bias - mean * a
    x = args[0].astype(jnp.float32)
    return (x * a.astype(np.float32) + b.astype(np.float32)).astype(module.dtype)


def _onnx_function(variables: Any, cfg: Config, *, flip_test: bool
                   ) -> Callable[[jax.Array], jax.Array]:
    # The computation of heatmaps_function with BatchNorm folded (_folded_batchnorm).
    model, constants, flip_pairs, shift = _network(variables, cfg, flip_test)

    def heatmaps(images: jax.Array) -> jax.Array:
        with nn.intercept_methods(_folded_batchnorm):
            return predict_heatmaps(model, constants, images, flip_test=bool(flip_test),
                                    flip_pairs=flip_pairs, shift=shift)

    return heatmaps


def _write_atomic(path: str, data: bytes) -> None:
    # Into a temporary file beside the target (made readable by all, as the
    # file to deploy), then renamed: a reader never sees a partial write.
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def to_stablehlo(variables: Any, cfg: Config, path: str | os.PathLike, *,
                 batch_size: int | None = None, flip_test: bool = False,
                 platforms: tuple[str, ...] | None = None) -> str:
    """Serialises the network with ``jax.export`` to ``path``.

    Args:
      variables: ``{'params', 'batch_stats'}`` of ``cfg``'s network.
      cfg: the configuration (input size, joints, dataset for the flip pairs).
      path: the file to write (replaced atomically).
      batch_size: a fixed batch, or None for a symbolic batch ``N``.
      flip_test: fuse the flip test into the exported function.
      platforms: the platforms to lower for, e.g. ``("cpu", "cuda")``;
        default the backend JAX runs on here.

    Returns:
      ``path`` as a string. :func:`load_stablehlo` runs it.

    Raises:
      MissingDependencyError: flatbuffers (which jax.export needs) is missing.
      ValueError: ``variables`` do not fit ``cfg``'s network, or (with
        ``flip_test``) ``cfg``'s dataset has another joint count.
    """
    _check_batch_size(batch_size)
    path = os.fspath(path)
    _require("flatbuffers", "StableHLO serialisation (jax.export)")
    fn = jax.jit(heatmaps_function(variables, cfg, flip_test=flip_test))
    batch = jax.export.symbolic_shape("N")[0] if batch_size is None else batch_size
    spec = jax.ShapeDtypeStruct(_input_shape(cfg, batch), jnp.float32)
    exported = jax.export.export(fn, platforms=platforms)(spec)
    _write_atomic(path, bytes(exported.serialize()))
    return path


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    # jax2onnx prints a debug line for every flax Conv it converts, and it and
    # onnx_ir log warnings about plugins for other libraries and about value
    # infos they leave out; errors still raise.
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def to_onnx(variables: Any, cfg: Config, path: str | os.PathLike, *,
            batch_size: int | None = None, flip_test: bool = False,
            opset: int = DEFAULT_OPSET) -> str:
    """Converts the network to an ONNX file with jax2onnx.

    The graph has one input ``images`` (N, 3, H, W) float32 and one output
    ``heatmaps`` (N, J, H/4, W/4) float32; N is the symbolic dimension ``N``
    unless ``batch_size`` fixes it. The model's metadata holds the
    configuration (``hrnet_jax.config``, JSON) and ``hrnet_jax.flip_test``.
    JAX's compilation caches are cleared (see the comment inside), so jitted
    functions of this process compile again on their next call.

    Args:
      variables, cfg, path, batch_size, flip_test: as :func:`to_stablehlo`'s.
      opset: the ONNX opset of the default domain.

    Returns:
      ``path`` as a string. :func:`load_onnx` runs it with onnxruntime.

    Raises:
      MissingDependencyError: jax2onnx or onnx is not installed.
    """
    _check_batch_size(batch_size)
    path = os.fspath(path)
    onnx = _require("onnx", "ONNX export")
    fn = _onnx_function(variables, cfg, flip_test=flip_test)
    shape = _input_shape(cfg, "N" if batch_size is None else batch_size)
    # jax2onnx traces with jax.numpy functions replaced by its own primitives,
    # and jitted functions it meets (decode's flip helpers) keep those traces
    # in JAX's caches, where a later call of the same shapes would find them
    # and fail to compile. The caches are emptied before (so the conversion
    # does not depend on what ran before it) and after.
    jax.clear_caches()
    try:
        with _quiet_converter():
            jax2onnx = _require("jax2onnx", "ONNX export")
            model = jax2onnx.to_onnx(fn, [shape], model_name="hrnet_jax_heatmaps",
                                     opset=int(opset), input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME])
    finally:
        jax.clear_caches()
    # The oldest IR version that carries the opset, so older runtimes read the file.
    model.ir_version = min(model.ir_version,
                           onnx.helper.find_min_ir_version_for(list(model.opset_import)))
    onnx.helper.set_model_props(model, {
        "hrnet_jax.config": json.dumps(config_lib.to_dict(cfg), sort_keys=True),
        "hrnet_jax.flip_test": json.dumps(bool(flip_test)),
        "hrnet_jax.input": f"{INPUT_NAME} (N, 3, H, W) float32: "
                           f"{'RGB' if cfg.dataset.color_rgb else 'BGR'} crops scaled to [0, 1] "
                           "and normalised with the ImageNet mean and std",
    })
    onnx.checker.check_model(model, full_check=True)
    _write_atomic(path, model.SerializeToString())
    return path


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A loaded export (``format`` "onnx" or "stablehlo", read from ``path``):
    ``model(images)`` gives heatmaps as a NumPy array. ``input_shape`` is
    (N, 3, H, W) and ``output_shape`` (N, J, H/4, W/4), N None for any batch."""

    path: str
    format: str
    input_shape: tuple[int | None, int, int, int]
    output_shape: tuple[int | None, int, int, int]
    run: Callable[[Any], Any] = dataclasses.field(repr=False)

    @property
    def batch_size(self) -> int | None:
        """The fixed batch of the file, or None for any batch."""
        return self.input_shape[0]

    def __call__(self, images: Any) -> np.ndarray:
        """Heatmaps (N, J, H/4, W/4) float32 of images (N, 3, H, W), NumPy or JAX.

        Raises ValueError naming the file and the shape it expects."""
        if not isinstance(images, jax.Array):
            images = np.asarray(images)
        if images.dtype != np.float32:
            images = images.astype(np.float32)
        shape = tuple(images.shape)
        expected = ", ".join("N" if d is None else str(d) for d in self.input_shape)
        if len(shape) != 4 or shape[1:] != self.input_shape[1:]:
            raise ValueError(f"{self.format} model {self.path!r}: expected {INPUT_NAME} of shape "
                             f"({expected}), got {shape}")
        if self.batch_size is not None and shape[0] != self.batch_size:
            raise ValueError(f"{self.format} model {self.path!r} was exported for batch "
                             f"{self.batch_size}: expected {INPUT_NAME} of shape ({expected}), "
                             f"got {shape}; export with batch_size=None for any batch")
        if shape[0] == 0:
            return np.zeros((0, *self.output_shape[1:]), np.float32)
        return np.asarray(self.run(images))


def load_stablehlo(path: str | os.PathLike) -> ExportedModel:
    """Runs a file written by :func:`to_stablehlo`, without the model code or variables.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      MissingDependencyError: flatbuffers is not installed.
      ValueError: the file is not a serialised ``jax.export`` module of this
        package's form (one (N, 3, H, W) float32 input, one 4-D output).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"StableHLO model {path!r} does not exist")
    _require("flatbuffers", "Reading a StableHLO model (jax.export)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        exported = jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers and jax raise several unrelated types on bad bytes
        raise ValueError(f"StableHLO model {path!r} could not be read as a jax.export "
                         f"serialisation: {type(e).__name__}: {e}") from None
    if len(exported.in_avals) != 1 or len(exported.out_avals) != 1 \
            or len(exported.in_avals[0].shape) != 4 or len(exported.out_avals[0].shape) != 4:
        raise ValueError(f"StableHLO model {path!r}: expected one (N, 3, H, W) input and one "
                         f"(N, J, H/4, W/4) output, got inputs {exported.in_avals} and outputs "
                         f"{exported.out_avals}")
    return ExportedModel(path, "stablehlo", _static_shape(exported.in_avals[0].shape),
                         _static_shape(exported.out_avals[0].shape), jax.jit(exported.call))


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> ExportedModel:
    """Runs a file written by :func:`to_onnx` with an onnxruntime CPU session.

    ``threads``: onnxruntime's intra-op threads (default: its own choice).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      MissingDependencyError: onnxruntime is not installed.
      ValueError: the file cannot be loaded, or its input or output is not
        ``images`` (N, 3, H, W) / ``heatmaps`` (N, J, h, w).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path!r} does not exist")
    ort = _require("onnxruntime", "Running an ONNX model")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(path, sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ValueError(f"ONNX model {path!r} could not be loaded by onnxruntime: {e}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME] \
            or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
        raise ValueError(f"ONNX model {path!r}: expected one input {INPUT_NAME!r} (N, 3, H, W) "
                         f"and one output {OUTPUT_NAME!r} (N, J, h, w), got inputs "
                         f"{[(i.name, i.shape) for i in inputs]} and outputs "
                         f"{[(o.name, o.shape) for o in outputs]}")

    def run(images: Any) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]

    return ExportedModel(path, "onnx", _static_shape(inputs[0].shape),
                         _static_shape(outputs[0].shape), run)


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """:func:`load_onnx` for a ``.onnx`` file, :func:`load_stablehlo` for any other."""
    return (load_onnx if os.fspath(path).lower().endswith(".onnx") else load_stablehlo)(path)


def jax_heatmaps(variables: Any, cfg: Config, *, flip_test: bool = False
                 ) -> Callable[[Any], jax.Array]:
    """The JAX network an export is checked against, as PoseEstimator runs it: ``jax.jit``
    of :func:`~hrnet_jax.forward.predict_heatmaps` with the variables as arguments, images
    (N, 3, H, W) -> heatmaps (N, J, H/4, W/4)."""
    model, constants, flip_pairs, shift = _network(variables, cfg, flip_test)
    network = jax.jit(functools.partial(predict_heatmaps, model, flip_test=bool(flip_test),
                                        flip_pairs=flip_pairs, shift=shift))
    constants = jax.device_put(constants)
    return lambda images: network(constants, jnp.asarray(images, jnp.float32))


class ExportCheck(NamedTuple):
    """An export's heatmaps against the JAX network's on one random batch."""

    batch: int
    max_abs_diff: float
    max_abs: float  # of the JAX heatmaps


def check_export(path: str | os.PathLike, variables: Any, cfg: Config, *,
                 flip_test: bool = False, batch: int | None = None, seed: int = 0) -> ExportCheck:
    """Runs an exported file and the JAX network (:func:`jax_heatmaps`) on a random batch.

    ``path`` is an ``.onnx`` file, else StableHLO, exported from ``variables``,
    ``cfg`` and ``flip_test``; the batch holds ``batch`` N(0, 1) images (the
    range of normalised crops; default the file's fixed batch, else 2).
    """
    exported = load_exported(path)
    n = batch if batch is not None else exported.batch_size or 2
    width, height = (int(v) for v in cfg.model.image_size)
    images = np.random.default_rng(seed).standard_normal((n, 3, height, width), np.float32)
    got = np.asarray(exported(images), np.float64)
    want = np.asarray(jax_heatmaps(variables, cfg, flip_test=flip_test)(images), np.float64)
    if got.shape != want.shape:
        raise ValueError(f"{exported.format} model {exported.path!r} gives heatmaps of shape "
                         f"{got.shape}; the JAX network gives {want.shape}")
    return ExportCheck(n, float(np.max(np.abs(got - want))), float(np.max(np.abs(want))))
