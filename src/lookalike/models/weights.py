"""Weights in and out of safetensors, in one place: a torch module's state as numpy arrays (what
``Embedder.state_tensors`` returns) and back, checked against the module the config builds, and
the ``weights.safetensors`` file itself (written atomically, read without running any code).

Every learned embedder that wraps a torch module uses :func:`state_arrays` /
:func:`restore_module`; :mod:`lookalike.models.base` uses :func:`write_tensors` /
:func:`read_tensors` for the file. Never pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import ModelMismatchError

#: The two files of every saved model and packaged net.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def state_arrays(module: Any) -> dict[str, np.ndarray]:
    """A torch module's ``state_dict`` as numpy arrays (empty for no module). (Not
    ``lookalike.models.training.module_tensors``, which copies torch tensors for early
    stopping.)"""
    if module is None:
        return {}
    return {name: value.detach().cpu().numpy() for name, value in module.state_dict().items()}


def restore_module(module: Any, tensors: dict[str, np.ndarray], owner: str) -> Any:
    """Load ``tensors`` into ``module`` (freshly built from the config) after checking that the
    names and shapes fit; a one-line :class:`ModelMismatchError` naming ``owner`` otherwise.
    Returns the module."""
    import torch

    expected = module.state_dict()
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise ModelMismatchError(f"{owner}: saved weights do not fit the config "
                                 f"(missing {missing}, unexpected {extra})")
    restored = {}
    for name, array in tensors.items():
        shape = tuple(expected[name].shape)
        # write_tensors stores 0-d arrays (BatchNorm's step counter) as shape (1,).
        if tuple(array.shape) != shape and not (shape == () and array.size == 1):
            raise ModelMismatchError(f"{owner}: weight {name} has shape {array.shape}, "
                                     f"the config needs {shape}")
        restored[name] = torch.from_numpy(np.array(array).reshape(shape))
    module.load_state_dict(restored)
    return module


def write_tensors(path: str | Path, tensors: dict[str, np.ndarray]) -> Path:
    """Write named arrays to a safetensors file atomically (temporary name, then rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # np.ascontiguousarray turns 0-d arrays (BatchNorm's num_batches_tracked) into shape (1,);
    # keep every tensor's own shape so read_tensors gets back what was saved.
    save_file({k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()},
              str(tmp))
    tmp.replace(path)
    return path


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The named arrays of a safetensors file (no code is run)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def weights_digest(folder: str | Path) -> str:
    """The first 10 hex digits of the SHA-256 of ``folder``'s weights file ("none": absent);
    what a model fitted on top of another records to know it (the look ranker on the look head)."""
    import hashlib

    path = Path(folder) / WEIGHTS_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10] if path.is_file() else "none"


def save_network(folder: str | Path, module: Any, config: dict[str, Any]) -> Path:
    """A small packaged net (segmenter, box regressor, look head): ``weights.safetensors`` of
    ``module``'s state and ``config.json`` of ``config``, each written atomically."""
    import json

    from lookalike.storage import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / WEIGHTS_FILE, state_arrays(module))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=1))
    return folder


def read_network(folder: str | Path, kind: str, what: str,
                 error: type[Exception]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The config and named arrays saved by :func:`save_network`, checked to be of ``kind``;
    ``error`` with one line naming ``what`` otherwise (no code is run)."""
    import json

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        tensors = read_tensors(folder / WEIGHTS_FILE)
    except (OSError, ValueError) as failure:
        raise error(f"{folder}: not a saved {what} ({failure})") from None
    if config.get("kind") != kind:
        raise error(f"{folder}: kind {config.get('kind')!r} is not {kind!r}")
    return config, tensors


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "state_arrays", "restore_module", "write_tensors", "read_tensors", "save_network",
           "read_network", "weights_digest"]
