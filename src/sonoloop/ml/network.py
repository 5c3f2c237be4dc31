"""One factory builds the network for training and for inference, from model.json data."""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet


class ArchitectureError(ValueError):
    pass


def build_network(architecture: dict) -> torch.nn.Module:
    if architecture.get("name") != "DynUNet":
        raise ArchitectureError(f"unknown architecture {architecture.get('name')!r}; this version builds DynUNet")
    filters = list(architecture["filters"])
    stages = len(filters)
    if stages < 2:
        raise ArchitectureError("a U-Net needs at least two stages")
    kernel = architecture.get("kernel_size", 3)
    return DynUNet(
        spatial_dims=architecture.get("spatial_dims", 2),
        in_channels=architecture.get("in_channels", 1),
        out_channels=architecture["out_channels"],
        kernel_size=[kernel] * stages,
        strides=[1] + [2] * (stages - 1),
        upsample_kernel_size=[2] * (stages - 1),
        filters=filters,
        norm_name=architecture.get("norm", "instance"),
        act_name=("leakyrelu", {"negative_slope": architecture.get("negative_slope", 0.01), "inplace": True}),
        res_block=False,
        deep_supervision=False,
    )


def input_multiple(architecture: dict) -> int:
    """Input sides must be a multiple of this (2 ** number of downsamplings)."""
    return 2 ** (len(architecture["filters"]) - 1)
