#!/usr/bin/env python
"""Convert a transformers folder's pytorch_model.bin (or its shards) to model.safetensors, once, so Mini-BERT can
read it: Mini-BERT never unpickles a checkpoint (unpickling can run code).

    python scripts/convert_bin.py path/to/bert-folder

Loads the pickle with `torch.load(weights_only=True)` (tensors only, no code), writes model.safetensors next to it
(tensors that share storage, such as a tied decoder, are stored as copies) and leaves the .bin files in place.
Needs torch and safetensors (`pip install -e '.[interop]'`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def bin_files(folder: str) -> list[str]:
    """The .bin files of `folder`: the shards its pytorch_model.bin.index.json lists, or pytorch_model.bin."""
    index = os.path.join(folder, "pytorch_model.bin.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as file:
            return [os.path.join(folder, name) for name in sorted(set(json.load(file)["weight_map"].values()))]
    single = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"{folder} has no pytorch_model.bin or pytorch_model.bin.index.json")


def convert(folder: str) -> str:
    import torch
    from safetensors.torch import save_file

    target = os.path.join(folder, "model.safetensors")
    if os.path.exists(target):
        raise FileExistsError(f"{target} already exists; nothing to convert")
    state = {}
    for path in bin_files(folder):
        state.update(torch.load(path, map_location="cpu", weights_only=True))
    tensors = {name: value.detach().clone().contiguous() for name, value in state.items()}
    tmp = target + ".tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a transformers BERT folder with pytorch_model.bin")
    args = parser.parse_args(argv)
    try:
        target = convert(args.folder)
    except ImportError as exc:
        print(f"error: converting needs torch and safetensors ({exc}); install them with: "
              "pip install -e '.[interop]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
