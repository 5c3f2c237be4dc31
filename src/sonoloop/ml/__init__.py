"""Echo segmentation: network factory, preprocessing, data, training, model folders.
Pure PyTorch/MONAI/NumPy: no Django here."""
