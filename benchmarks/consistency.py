"""Consistent masks over a cine: implausible frames and LV-area noise, frame by frame vs the
temporal pipeline, on the real loops Sonoloop has.

    .venv/bin/python benchmarks/consistency.py [--model default] [--engine auto] [--json OUT]

Loops: pydicom-data's 120-frame apical 4-chamber cine (JPEG, with ultrasound regions),
pydicom's own 30-frame cut of the same kind of echo (examples_ybr_color.dcm), and Debian
octave-dicom's 10-frame
palette-colour RLE echo (/usr/share/octave/packages/dicom-*/imdata/US-PAL-8-10x-echo.dcm,
when installed). Each loop goes through `echo.analyse.analyse_loop` twice in this process,
with the same model and engine: once as the worker ran it before issue 11 (each frame alone:
no temporal smoothing, no repair — `FRAME_BY_FRAME`) and once with the default settings
(class probabilities smoothed over neighbouring frames, implausible frames repaired).

Printed per loop and setting: implausible frames (and which criteria), the LV-area curve's
frame-to-frame noise (RMS of its second difference over its 5–95 % range), the beats' EFs,
the reported EF and its verdict, seconds; then the noise ratio after/before (target ≤ 0.5).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections import Counter
from pathlib import Path

from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.samples import ECHO_CINE_30, ECHO_CINE_JPEG, sample_path
from sonoloop.echo.analyse import FRAME_BY_FRAME, PipelineSettings, analyse_loop
from sonoloop.ml.infer import Segmenter
from sonoloop.ml.modelfolder import resolve_model

OCTAVE_LOOP = "/usr/share/octave/packages/dicom-*/imdata/US-PAL-8-10x-echo.dcm"


def loops() -> list[tuple[str, object, object, int]]:
    frames, header, bits = all_frames(sample_path(ECHO_CINE_JPEG), luma=True)
    found = [("pydicom-data A4C cine, 120 frames", frames, header, bits)]
    frames, header, bits = all_frames(sample_path(ECHO_CINE_30), luma=True)
    found.append(("pydicom A4C cine, 30 frames", frames, header, bits))
    for path in sorted(glob.glob(OCTAVE_LOOP))[:1]:
        frames, header, bits = all_frames(Path(path), luma=True)
        found.append(("octave-dicom palette RLE echo, 10 frames", frames, header, bits))
    return found


def summary(analysis) -> dict:
    m = analysis.measurements
    criteria = Counter(p for problems in m["quality"]["problems"].values() for p in problems)
    return {
        "implausible_frames": m["implausible_frames"],
        "implausible_before_repair": m["quality"]["implausible_before_repair"],
        "criteria": dict(criteria),
        "lv_area_noise": m["quality"]["lv_area_noise"],
        "beats_ef": [b["ef"] for b in m["beats"]],
        "ef": m["ef"],
        "ef_spread": m["ef_spread"],
        "reliability": m["reliability"],
        "seconds": analysis.seconds["total"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    segmenter = Segmenter(resolve_model(args.model), engine=args.engine)
    print(f"model {segmenter.description.get('name')}, engine {args.engine}")
    results = []
    for name, frames, header, bits in loops():
        row = {"loop": name, "frames": len(frames)}
        for label, settings in (("frame by frame", FRAME_BY_FRAME), ("temporal", PipelineSettings())):
            row[label] = summary(analyse_loop(frames, header, bits, segmenter, settings=settings))
        results.append(row)
        print(f"\n{name}")
        for label in ("frame by frame", "temporal"):
            s = row[label]
            print(f"  {label:15s} implausible {s['implausible_frames']:3d} (before repair "
                  f"{s['implausible_before_repair']}) {s['criteria']}; LV-area noise {s['lv_area_noise']:.4f}; "
                  f"beats EF {s['beats_ef']}; {s['reliability']}; {s['seconds']:.1f} s")
        before, after = row["frame by frame"]["lv_area_noise"], row["temporal"]["lv_area_noise"]
        row["noise_ratio"] = round(after / before, 3) if before else None
        print(f"  LV-area noise ratio temporal / frame by frame: {row['noise_ratio']} (target ≤ 0.5)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": segmenter.description.get("name"), "loops": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
