"""Post-training variants in ONNX Runtime, beside its fp32 in the same process (session 31):
    .venv/bin/python docs/experiments/int8-qat/variants_ort.py dyn|dynpc|stnoout|stpct99.99|stpct99.9|stent
prints time per frame and label Dice vs fp32 (LV, MYO, LA) on every third cine frame.
Writes its ONNX files to /tmp/q8/w (pre.onnx is the fp32 graph variants_equalise.py compares with)."""
import sys
if len(sys.argv) < 2 or sys.argv[1] not in ("dyn", "dynpc", "stnoout", "stpct99.99", "stpct99.9", "stent"): sys.exit(__doc__)
import io, sys, time, statistics, warnings
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from inference import label_dice
from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.ml.data import camus_frames, select
from sonoloop.ml.modelfolder import load_model, resolve_model
from sonoloop.ml.preprocess import prepare, region_box
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

work = Path("/tmp/q8/w"); work.mkdir(parents=True, exist_ok=True)
network, desc = load_model(resolve_model("default")); size = 384
if not (work / "pre.onnx").exists():
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network.cpu().eval(), (torch.zeros(1,1,size,size),), buf, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    (work/"fp32.onnx").write_bytes(buf.getvalue())
    quant_pre_process(str(work/"fp32.onnx"), str(work/"pre.onnx"))
frames, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
cine = np.stack([prepare(f, size, box)[0] for f in frames[::3]])[:, None].astype(np.float32)
def sess(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
def labels(s):
    return np.concatenate([s.run(None, {"image": cine[i:i+1]})[0].argmax(1) for i in range(len(cine))])
def per_frame(s, n=6):
    x = cine[:1]; s.run(None, {"image": x}); t=[]
    for _ in range(n):
        b=time.perf_counter(); s.run(None, {"image": x}); t.append(time.perf_counter()-b)
    return statistics.median(t)
variant = sys.argv[1]
out = work / f"{variant}.onnx"
if variant == "dyn":
    quantize_dynamic(str(work/"pre.onnx"), str(out), op_types_to_quantize=["Conv"], per_channel=False, weight_type=QuantType.QUInt8)
elif variant == "dynpc":
    quantize_dynamic(str(work/"pre.onnx"), str(out), op_types_to_quantize=["Conv"], per_channel=True, weight_type=QuantType.QInt8)
elif variant.startswith("st"):
    cal = [prepare(f.load()[0], size)[0] for f in select(camus_frames(Path("../shared/data/camus")), "training")][::4]
    class R(CalibrationDataReader):
        def __init__(s): s.it = iter([{"image": x[None,None].astype(np.float32)} for x in cal])
        def get_next(s): return next(s.it, None)
    extra = {}
    from onnxruntime.quantization import CalibrationMethod
    method = CalibrationMethod.MinMax
    if "pct" in variant:
        method = CalibrationMethod.Percentile; extra["CalibPercentile"] = float(variant.split("pct")[1]); cal = cal[::6]
    if "ent" in variant:
        method = CalibrationMethod.Entropy; cal = cal[::6]
    if "noout" in variant: extra["OpTypesToExcludeOutputQuantization"] = ["Conv"]
    quantize_static(str(work/"pre.onnx"), str(out), R(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"], extra_options=extra, calibrate_method=method)
ref = sess(work/"pre.onnx"); q = sess(out)
tr, tq = [], []
for _ in range(2):
    tr.append(per_frame(ref)); tq.append(per_frame(q))
print(variant, "fp32 %.1f ms, q %.1f ms, ratio %.2f" % (min(tr)*1e3, min(tq)*1e3, min(tq)/min(tr)))
print(variant, "dice", [round(d,4) for d in label_dice(labels(q), labels(ref), 4)])
