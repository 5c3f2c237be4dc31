"""The `sonoloop` command: serve, manage, peer, jobs, worker, train, evaluate, predict."""

from __future__ import annotations

import argparse
import os
import sys

from sonoloop.config import Config, ConfigError, check_startup
from sonoloop.ml.spec import ENGINES

ENGINE_HELP = "inference engine (auto: ONNX Runtime on the CPU, bf16 on a GPU; see benchmarks/inference.py)"

SERVE_FLAGS = {
    "data_dir": "SONOLOOP_DATA_DIR",
    "http_port": "SONOLOOP_HTTP_PORT",
    "http_host": "SONOLOOP_HTTP_HOST",
    "dicom_port": "SONOLOOP_DICOM_PORT",
    "dicom_host": "SONOLOOP_DICOM_HOST",
    "ae_title": "SONOLOOP_AE_TITLE",
    "database_url": "DATABASE_URL",
}


def _django(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sonoloop.web.settings")
    try:
        Config.from_env()
    except ConfigError as exc:
        print(f"sonoloop: {exc}", file=sys.stderr)
        return 2
    from django.core.management import execute_from_command_line

    execute_from_command_line(["sonoloop manage", *argv])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    for attr, variable in SERVE_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            os.environ[variable] = str(value)
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"sonoloop: {exc}", file=sys.stderr)
        return 2
    problems = check_startup(config)
    if problems:
        print("sonoloop cannot start:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    from sonoloop.supervisor import serve

    return serve(config)


def cmd_manage(args: argparse.Namespace) -> int:
    return _django(args.rest)


PASSTHROUGH: set[str] = set()  # subcommands whose arguments Django's own command parses


def _passthrough(sub, name: str, help: str) -> None:
    """A subcommand that is a Django management command of the same name, its arguments passed on."""
    PASSTHROUGH.add(name)
    parser = sub.add_parser(name, help=help, add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=lambda args: _django([name, *args.rest]))


def cmd_experiment(args: argparse.Namespace) -> int:
    from sonoloop.ml import commands

    return commands.experiment_command(args)


def cmd_worker(args: argparse.Namespace) -> int:
    return _django(["worker", "--queue-name", args.queues, "--interval", str(args.interval),
                    *(["--worker-id", args.worker_id] if args.worker_id else [])])


def cmd_train(args: argparse.Namespace) -> int:
    from sonoloop.ml import commands

    return commands.train_command(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sonoloop.ml import commands

    return commands.evaluate_command(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from sonoloop.ml import commands

    return commands.predict_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonoloop",
        description="Sonoloop: echo PACS node, automatic segmentation, correction and retraining.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the web server, the DICOM node and the task worker")
    serve.add_argument("--data-dir", help="folder for the database and images (SONOLOOP_DATA_DIR)")
    serve.add_argument("--http-port", type=int, help="web port (SONOLOOP_HTTP_PORT, default 8000)")
    serve.add_argument("--http-host", help="web address to listen on (SONOLOOP_HTTP_HOST, default 0.0.0.0)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (SONOLOOP_DICOM_PORT, default 11112)")
    serve.add_argument("--dicom-host", help="DICOM address to listen on (SONOLOOP_DICOM_HOST, default 0.0.0.0)")
    serve.add_argument("--ae-title", help="this node's AE title (SONOLOOP_AE_TITLE, default SONOLOOP)")
    serve.add_argument("--database-url", help="e.g. postgres://user:pass@host/db (DATABASE_URL; default SQLite)")
    serve.set_defaults(func=cmd_serve)

    manage = sub.add_parser("manage", help="run a Django management command", add_help=False)
    manage.add_argument("rest", nargs=argparse.REMAINDER)
    manage.set_defaults(func=cmd_manage)

    _passthrough(sub, "peer", "DICOM peers: add AE --host H --port P [--store] [--query] [--move-destination] | "
                              "list | remove AE")
    _passthrough(sub, "delete", "delete stored images with their results: --study UID | --series UID | "
                                "--instance UID --reason TEXT")
    _passthrough(sub, "export", "a de-identified dataset: --study UID … | --approved, --out DIR [--keep-dates]")
    _passthrough(sub, "jobs", "analysis jobs: list [--status S] [--instance UID] | retry ID")
    _passthrough(sub, "models", "model versions: list | evaluate V | promote V --as ADMIN [--force] | "
                                "rollback V --as ADMIN | register FOLDER")
    _passthrough(sub, "retrain", "fine-tune a version on approved annotations: --parent V --name N "
                                 "--strategy S --as ADMIN [--epochs --batch-size --lr --queue]")

    experiment = sub.add_parser("experiment", help="reproduce the paper's retraining experiments: paper --out DIR")
    experiment.add_argument("which", choices=["paper"])
    experiment.add_argument("--data", required=True, help="CAMUS frames folder (e.g. ../shared/data/camus)")
    experiment.add_argument("--out", required=True, help="an empty or new folder for report.md, results.json, figures")
    experiment.add_argument("--parent", default="default", help="the model fine-tuned (default: the shipped one)")
    experiment.add_argument("--quick", action="store_true", help="tiny model, few steps: checks the plumbing in minutes")
    experiment.add_argument("--engine", default="fp32", choices=ENGINES, help="inference engine for scoring")
    experiment.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    experiment.add_argument("--bf16", action="store_true", help="bf16 autocast while training (GPU, or CPU with bf16)")
    experiment.add_argument("--resume", action="store_true",
                            help="continue an interrupted run in --out: finished runs are kept, the rest are run")
    experiment.set_defaults(func=cmd_experiment)

    worker = sub.add_parser("worker", help="run background tasks (start more, here or on other machines, to scale out)")
    worker.add_argument("--queues", default="*", help="comma-separated: inference, training, default (default: all)")
    worker.add_argument("--interval", type=float, default=0.5, help="seconds between polls when idle")
    worker.add_argument("--worker-id", help="unique name of this worker (default: random)")
    worker.set_defaults(func=cmd_worker)

    train = sub.add_parser("train", help="train a segmentation model on CAMUS-layout frames")
    train.add_argument("--data", required=True, help="folder with images/, labels/, frames.csv (e.g. ../shared/data/camus)")
    train.add_argument("--out", required=True, help="the new model folder (must not exist)")
    train.add_argument("--work", help="checkpoints; an interrupted run resumes from here (default: OUT.work)")
    train.add_argument("--name", default="camus-unet", help="model name recorded in model.json")
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--lr-schedule", choices=("constant", "poly"), default="constant",
                       help="poly: nnU-Net's lr·(1 - epoch/epochs)^0.9")
    train.add_argument("--init-from", metavar="MODEL",
                       help="start from this model's weights (a folder or 'default'); it becomes the parent version")
    train.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with avx512_bf16, GPUs)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--augmentation", choices=("basic", "acquisition"), default="basic",
                       help="basic: jitter and intensity (v1, v2); acquisition: also flips, low resolution, depth, "
                            "sector, gain, speckle, blur (v3)")
    train.add_argument("--keep", choices=("best", "last"), default="best",
                       help="best: the epoch with the best validation Dice (optimistic validation); last: the final "
                            "epoch of a fixed schedule (validation stays an honest estimate)")
    train.add_argument("--fp16-weights", action="store_true", help="store the weights in float16 (half the size)")
    train.add_argument("--tiny", action="store_true", help="the tiny test configuration (64², 3 stages)")
    train.add_argument("--limit", type=int, help="use only the first N training and N validation frames")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a model on CAMUS-layout frames (Dice, HD95, by ED/ES)")
    evaluate.add_argument("--model", required=True, help="a model folder, or 'default' for the shipped model")
    evaluate.add_argument("--data", required=True, help="folder with images/, labels/, frames.csv")
    evaluate.add_argument("--split", default=None, help="training | validation (default: every frame listed)")
    evaluate.add_argument("--limit", type=int, help="only the first N frames")
    evaluate.add_argument("--json", required=True, help="where to write the full report")
    evaluate.add_argument("--markdown", help="also write the summary table here")
    evaluate.add_argument("--png", help="also write a grid of predictions over the ground truth here")
    evaluate.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    evaluate.add_argument("--mirror", action="store_true",
                          help="flip every frame left-right (echoes recorded in the mirrored display convention)")
    evaluate.add_argument("--resolution", type=int, metavar="PX",
                          help="resample frames and labels to PX on the long side first and score there "
                               "(e.g. 112, the size of EchoNet-style loops)")
    evaluate.add_argument("--flip-average", action="store_true",
                          help="test-time augmentation: average each frame's probabilities with its mirror image's "
                               "(twice the network time)")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="segment every frame of a DICOM file")
    predict.add_argument("file", help="a DICOM image or cine loop")
    predict.add_argument("--out", required=True, help="folder for mask-NNNN.png (label values) and overlay.png")
    predict.add_argument("--model", default="default", help="a model folder, or 'default'")
    predict.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH | {"manage"}:
        # argparse's REMAINDER drops a first argument that looks like an option
        # (`sonoloop delete --study …`): the command's own parser reads everything after its name
        return _django(argv[1:] if argv[0] == "manage" else argv)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
