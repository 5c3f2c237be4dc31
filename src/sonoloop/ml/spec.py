"""The model's description as data: architecture, classes and preprocessing live in model.json."""

CLASSES = ["background", "LV", "MYO", "LA"]

# The paper's U-Net: six stages of two 3×3 convolutions + instance norm + leaky ReLU,
# filters 32→320, stride-2 downsampling between stages, mirrored decoder with skips,
# 1×1 convolution to the classes (softmax applied by the loss and at inference).
DEFAULT_ARCHITECTURE = {
    "name": "DynUNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": len(CLASSES),
    "filters": [32, 64, 128, 256, 320, 320],
    "kernel_size": 3,
    "norm": "instance",
    "negative_slope": 0.01,
}

DEFAULT_PREPROCESSING = {
    "size": 384,  # square network input, letterboxed (aspect ratio kept, zero padding)
    "crop": "ultrasound_region",  # DICOM Sequence of Ultrasound Regions, else the detected sector
    "grayscale": "luma",  # ITU-R BT.601 weights for colour frames
    "intensity": "unit",  # scaled to [0, 1] by the frame's bit depth
}

# Tiny variant for tests and CI: same code paths, seconds to train.
TINY_ARCHITECTURE = {**DEFAULT_ARCHITECTURE, "filters": [4, 8, 16]}
TINY_PREPROCESSING = {**DEFAULT_PREPROCESSING, "size": 64}

# How a trained network can be run (sonoloop.ml.engines); "auto" picks the fastest that
# agrees with fp32 (benchmarks/inference.py).
ENGINES = ("auto", "fp32", "bf16", "compile", "compile-bf16", "onnx")
