"""A model version is a self-describing folder: model.json + weights.safetensors (+ NOTICE)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and MONAI are imported where a network is built or saved, not here:
    import torch  # the web server, the DICOM node and the CLI read model folders without them

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 1


class ModelFolderError(ValueError):
    """The folder is not a usable model; the message names what is wrong."""


DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def resolve_model(name: str) -> Path:
    """A model folder from a name: "default" is the shipped model, anything else a path."""
    if name == "default":
        if not (DEFAULT_MODEL / MODEL_JSON).exists():
            raise ModelFolderError(f"no default model is shipped in {DEFAULT_MODEL} yet; pass --model FOLDER")
        return DEFAULT_MODEL
    return Path(name)


def weights_digest(folder: Path, description: dict) -> str:
    """The version of a model folder when model.json names none: the start of its weights' SHA-256."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(folder) / description.get("weights", {}).get("file", WEIGHTS), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def unique_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once (MONAI's DynUNet registers its blocks twice,
    under ``skip_layers`` too); safetensors refuses shared tensors."""
    seen, state = set(), {}
    items = sorted(network.state_dict().items(), key=lambda kv: kv[0].startswith("skip_layers."))
    for name, tensor in items:
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)) if tensor.numel() else (name,)
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor
    return state


def load_unique_state(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = network.load_state_dict(state, strict=False)
    aliases = set(network.state_dict()) - set(unique_state(network))
    if unexpected or set(missing) - aliases:
        raise ModelFolderError(f"weights do not fit the network: missing {sorted(set(missing) - aliases)[:3]}, "
                               f"unexpected {unexpected[:3]}")


def save_model(folder: Path, network: torch.nn.Module, description: dict, fp16: bool = False,
               notice: str | None = None) -> Path:
    """Write a complete model folder atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise ModelFolderError(f"{folder} exists; a model version is never overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().cpu()
                 for k, v in unique_state(network).items()}
        save_file(state, staging / WEIGHTS)
        meta = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights": {"file": WEIGHTS, "dtype": "float16" if fp16 else "float32"},
            **description,
        }
        (staging / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        if notice:
            (staging / "NOTICE").write_text(notice)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_description(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.exists():
        raise ModelFolderError(f"{folder} is not a model folder: {MODEL_JSON} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    for key in ("architecture", "classes", "preprocessing"):
        if key not in meta:
            raise ModelFolderError(f"{path} has no {key!r}")
    return meta


def load_model(folder: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The network (fp32, eval mode) and its description."""
    from safetensors.torch import load_file

    from .network import ArchitectureError, build_network

    folder = Path(folder)
    meta = read_description(folder)
    weights = folder / meta.get("weights", {}).get("file", WEIGHTS)
    if not weights.exists():
        raise ModelFolderError(f"{folder}: the weights file {weights.name} is missing")
    try:
        network = build_network(meta["architecture"])
    except (ArchitectureError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"{folder}: the architecture in {MODEL_JSON} cannot be built: {exc}") from None
    try:
        state = load_file(weights)
    except Exception as exc:
        raise ModelFolderError(f"{folder}: {weights.name} cannot be read: {exc}") from None
    expected = unique_state(network)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [
            f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} with the wrong shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
            f"instead of {tuple(expected[wrong[0]].shape)})" if wrong else "",
        ]))
        raise ModelFolderError(f"{folder}: the weights do not match the architecture: {details}")
    load_unique_state(network, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return network.to(device).eval(), meta
