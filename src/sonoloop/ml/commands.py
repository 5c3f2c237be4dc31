"""What the `sonoloop train` command does, argument parsing aside."""

from __future__ import annotations

import sys
from pathlib import Path

from .data import DataError, camus_frames, select
from .engines import EngineError
from .modelfolder import ModelFolderError, read_description, resolve_model
from .spec import TINY_ARCHITECTURE, TINY_PREPROCESSING
from .train import TrainConfig, export_best, train

CAMUS_NOTICE = """These weights derive from the CAMUS dataset and are distributed under its terms:
Creative Commons Attribution-NonCommercial-ShareAlike 4.0 (CC BY-NC-SA 4.0), for
non-commercial scientific research only.

Cite: S. Leclerc, E. Smistad, J. Pedrosa, A. Ostvik, et al., "Deep Learning for
Segmentation using an Open Large-Scale Dataset in 2D Echocardiography", IEEE Transactions
on Medical Imaging 38(9):2198-2210, 2019, doi:10.1109/TMI.2019.2900516.
"""


def train_command(args) -> int:
    out = Path(args.out)
    if out.exists():
        print(f"sonoloop train: {out} exists; a model version is never overwritten", file=sys.stderr)
        return 2
    try:
        frames = camus_frames(Path(args.data))
        train_frames = select(frames, "training", args.limit)
        val_frames = select(frames, "validation", args.limit)
    except DataError as exc:
        print(f"sonoloop train: {exc}", file=sys.stderr)
        return 2
    parent = None
    init_from = getattr(args, "init_from", None)
    if init_from:
        try:
            init_folder = resolve_model(init_from)
            parent = read_description(init_folder)["name"]
        except ModelFolderError as exc:
            print(f"sonoloop train: --init-from: {exc}", file=sys.stderr)
            return 2
        init_from = str(init_folder.resolve())
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, bf16=args.bf16,
                         augment=not args.no_augment, lr_schedule=getattr(args, "lr_schedule", "constant"),
                         init_from=init_from, keep=getattr(args, "keep", "best"),
                         augmentation=getattr(args, "augmentation", "basic"))
    if args.tiny:
        config.architecture, config.preprocessing = dict(TINY_ARCHITECTURE), dict(TINY_PREPROCESSING)
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    print(f"training on {len(train_frames)} frames, validating on {len(val_frames)}; checkpoints in {work}")
    try:
        history = train(train_frames, val_frames, config, work, progress=not args.quiet)
    except (ValueError, ModelFolderError) as exc:
        print(f"sonoloop train: {exc}", file=sys.stderr)
        return 2
    try:
        export_best(work, out, config, history, train_frames, val_frames, name=args.name,
                    data_source=f"CAMUS frames ({Path(args.data).resolve()})", parent=parent, fp16=args.fp16_weights,
                    notice=CAMUS_NOTICE)
    except ModelFolderError as exc:
        print(f"sonoloop train: {exc}", file=sys.stderr)
        return 2
    best = history[-1] if config.keep == "last" else max(history, key=lambda h: h.score)
    print(f"wrote {out}: {'last' if config.keep == 'last' else 'best'} epoch {best.epoch}, validation Dice "
          + ", ".join(f"{k} {v:.3f}" for k, v in best.val_dice.items()))
    return 0


def evaluate_command(args) -> int:
    from .evaluate import evaluate, markdown_table, write_reports
    from .infer import Segmenter

    try:
        segmenter = Segmenter(resolve_model(args.model), engine=getattr(args, "engine", "auto"),
                              flip_average=getattr(args, "flip_average", False))
        frames = select(camus_frames(Path(args.data)), args.split, args.limit)
    except (ModelFolderError, DataError, EngineError) as exc:
        print(f"sonoloop evaluate: {exc}", file=sys.stderr)
        return 2
    report, examples = evaluate(segmenter, frames, mirror=getattr(args, "mirror", False),
                                resolution=getattr(args, "resolution", None))
    write_reports(report, examples, Path(args.json), args.markdown and Path(args.markdown), args.png and Path(args.png))
    print(markdown_table(report))
    return 0


def predict_command(args) -> int:
    """The worker's pipeline on one file: masks, overlay, measurements with the EF verdict,
    and the DICOM SEG and SR it would store."""
    import json

    import numpy as np
    from PIL import Image
    from pydicom.filewriter import dcmwrite

    from sonoloop import __version__
    from sonoloop.dicom.pixels import NoPixelData, all_frames
    from sonoloop.dicom.seg import Device
    from sonoloop.echo.analyse import DicomOutputs, analyse_loop

    from .evaluate import COLOURS
    from .infer import Segmenter
    from .modelfolder import weights_digest
    from .preprocess import FrameError

    try:
        folder = resolve_model(args.model)
        segmenter = Segmenter(folder, engine=getattr(args, "engine", "auto"))
    except (ModelFolderError, EngineError) as exc:
        print(f"sonoloop predict: {exc}", file=sys.stderr)
        return 2
    name = str(segmenter.description.get("name") or folder.name)
    version = str(segmenter.description.get("version") or weights_digest(folder, segmenter.description))
    try:
        frames, header, bits = all_frames(Path(args.file), luma=True)
        analysis = analyse_loop(frames, header, bits, segmenter,
                                outputs=DicomOutputs(name, version, Device(software_version=__version__),
                                                     description=f"AI segmentation ({name})"))
    except (NoPixelData, FrameError) as exc:
        print(f"sonoloop predict: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # pydicom's decoders raise many kinds on a corrupt file
        print(f"sonoloop predict: {Path(args.file).name} cannot be read as a DICOM image: {exc}", file=sys.stderr)
        return 2
    labels, measurements = analysis.labels, analysis.measurements
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n, frame_labels in enumerate(labels, start=1):
        Image.fromarray(frame_labels).save(out / f"mask-{n:04d}.png")
    (out / "measurements.json").write_text(json.dumps(measurements, indent=1))
    written = ["measurements.json"]
    for dataset, filename in ((analysis.segmentation, "seg.dcm"), (analysis.report, "sr.dcm")):
        if dataset is not None:
            dcmwrite(out / filename, dataset, enforce_file_format=True)
            written.append(filename)
    middle = measurements.get("ed_frame") if measurements.get("ed_frame") is not None else len(labels) // 2
    frame = frames[middle]
    rgb = (np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame[..., :3]).astype(np.float32)
    if bits > 8:
        rgb = rgb * (255.0 / (2 ** bits - 1))
    for label, colour in COLOURS.items():
        rgb[labels[middle] == label] = 0.55 * rgb[labels[middle] == label] + 0.45 * np.array(colour)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(out / "overlay.png")
    print(f"{len(labels)} frame masks ({', '.join(segmenter.classes)} = 0..{len(segmenter.classes) - 1}), "
          f"overlay.png (frame {middle + 1}), {', '.join(written)} in {out}")
    print(f"{measurements['implausible_frames']} of {len(labels)} frames implausible; EF {measurements['reliability']}")
    return 0


def experiment_command(args) -> int:
    from .experiment import run_paper

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume:
        print(f"sonoloop experiment: {out} is not empty; results are never overwritten (--resume continues "
              "an interrupted run there)", file=sys.stderr)
        return 2
    try:
        parent = None if args.quick else resolve_model(args.parent)
        if parent is not None:
            read_description(parent)
        results = run_paper(Path(args.data), out, parent=parent, quick=args.quick, engine=args.engine,
                            learning_rate=args.lr, bf16=args.bf16)
    except (DataError, ModelFolderError, EngineError, ValueError) as exc:
        print(f"sonoloop experiment: {exc}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(results['experiments']) + 1} figures")
    return 0
