"""Converts a reference PyTorch HRNet checkpoint into an exported hrnet_jax model.

    python scripts/convert_checkpoint.py pose_hrnet_w32_256x256.pth --config hrnet_w32 --out DIR

The input is a ``.pth`` file (needs torch: ``pip install 'hrnet_jax[torch]'``)
or a ``.npz`` archive of reference name -> array. The output directory is what
``scripts/test.py`` and ``scripts/predict.py`` load.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from hrnet_jax import config as config_lib
from hrnet_jax.convert import read_torch_checkpoint, torch_state_dict_to_variables
from hrnet_jax.model_file import save_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="reference .pth file, or .npz of name -> array")
    parser.add_argument("--config", required=True,
                        help="preset (hrnet_w32, hrnet_w48, hrnet_w32_coco, ...) or a .yaml file")
    parser.add_argument("--out", required=True, help="exported model directory to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.dtype=bfloat16 (repeatable)")
    args = parser.parse_args(argv)

    cfg = config_lib.override(config_lib.get_config(args.config), args.set)
    if args.checkpoint.endswith(".npz"):
        with np.load(args.checkpoint) as archive:
            state_dict = {name: archive[name] for name in archive.files}
    else:
        state_dict = read_torch_checkpoint(args.checkpoint)
    try:
        variables = torch_state_dict_to_variables(state_dict, cfg)
    except ValueError as e:
        print(f"error: {args.checkpoint} does not fit config {args.config!r}:\n{e}",
              file=sys.stderr)
        return 1
    path = save_model(args.out, variables, cfg)
    print(f"wrote {path} ({len(state_dict)} tensors from {args.checkpoint}, "
          f"config {args.config})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
