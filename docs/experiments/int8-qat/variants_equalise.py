"""Cross-layer equalisation before static int8 (session 31); run variants_ort.py once first:
    .venv/bin/python docs/experiments/int8-qat/variants_equalise.py ALPHA OUTPUTS(0|1) Conv
ALPHA: 1 equalises the activations' channel ranges fully, 0.5 splits with the weights;
OUTPUTS=1 also equalises the convolutions' output channels before instance norm."""
import sys
if len(sys.argv) < 4: sys.exit(__doc__)
import copy, io, sys, time, statistics, warnings
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
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from monai.networks.blocks.dynunet_block import UnetBasicBlock

alpha = float(sys.argv[1]); outeq = sys.argv[2] == "1"; ops = sys.argv[3].split(",")
work = Path("/tmp/q8/w"); size = 384
network, desc = load_model(resolve_model("default")); network = network.float().eval()
cal = [prepare(f.load()[0], size)[0] for f in select(camus_frames(Path("../shared/data/camus")), "training")][::4]
cal = np.stack(cal)[:, None].astype(np.float32)
frames, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
cine = np.stack([prepare(f, size, box)[0] for f in frames[::3]])[:, None].astype(np.float32)

# per-channel max |input| and |output| of every conv, on the calibration frames
stats = {}
def hook(name):
    def f(m, i, o):
        a = i[0].abs().amax(dim=(0, 2, 3)); b = o.abs().amax(dim=(0, 2, 3))
        if name in stats: stats[name] = (torch.maximum(stats[name][0], a), torch.maximum(stats[name][1], b))
        else: stats[name] = (a, b)
    return f
mods = {n: m for n, m in network.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
hs = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
with torch.inference_mode():
    for i in range(0, len(cal), 4): network(torch.from_numpy(cal[i:i+4]))
for h in hs: h.remove()

net = copy.deepcopy(network)
M = dict(net.named_modules())
def W(name): return M[name].weight.data
blocks = [n for n, m in net.named_modules() if isinstance(m, UnetBasicBlock)]
# consumers of each post-lrelu tensor: (producing block, which norm) -> [(conv name, offset)]
ups = sorted({n.split(".conv_block")[0] for n in blocks if n.startswith("upsamples")}, key=lambda s: int(s.split(".")[1]))
downs = ["input_block"] + [f"downsamples.{i}" for i in range(len(net.downsamples))]
chain = downs + ["bottleneck"]
producers = {}
for b in blocks:
    producers[(b, "norm1")] = [(f"{b}.conv2.conv", 0)]
for k, b in enumerate(chain[:-1]):
    producers[(b, "norm2")] = [(f"{chain[k+1]}.conv1.conv", 0)]
# skips: downs[-1-j] feeds ups[j] conv_block.conv1 at offset = transp out channels
for j, u in enumerate(ups):
    skip = chain[-2 - j]
    off = M[f"{u}.transp_conv.conv"].weight.shape[1]
    producers[(skip, "norm2")].append((f"{u}.conv_block.conv1.conv", off))
    src = "bottleneck" if j == 0 else f"{ups[j-1]}.conv_block"
    producers[(src, "norm2")] = [(f"{u}.transp_conv.conv", 0)]
producers[(f"{ups[-1]}.conv_block", "norm2")] = [("output_block.conv.conv", 0)]
def in_slice(conv, off, C):
    w = W(conv)
    return (w[off:off+C] if isinstance(M[conv], torch.nn.ConvTranspose2d) else w[:, off:off+C])
def wmax_in(conv, off, C):
    w = in_slice(conv, off, C); d = (1, 2, 3)
    return (w.abs().transpose(0, 1).amax(dim=d) if not isinstance(M[conv], torch.nn.ConvTranspose2d) else w.abs().amax(dim=d))
def scale_in(conv, off, C, s):
    w = W(conv)
    if isinstance(M[conv], torch.nn.ConvTranspose2d): w[off:off+C] *= s.view(-1, 1, 1, 1)
    else: w[:, off:off+C] *= s.view(1, -1, 1, 1)
with torch.no_grad():
    # 1. outputs of convs followed by instance norm: any positive per-channel factor is free
    if outeq:
        for b in blocks:
            for c in ("conv1", "conv2"):
                name = f"{b}.{c}.conv"; m = stats[name][1]
                t = (m.median() / m.clamp_min(1e-6)).clamp(1 / 16, 16)
                W(name).mul_(t.view(-1, 1, 1, 1))
    # 2. post-lrelu tensors: divide by s in the (made affine) norm, multiply consumers' inputs by s
    for (b, nm), cons in producers.items():
        conv0, off0 = cons[0]
        amax = stats[conv0][0][off0:off0 + M[f"{b}.{nm}"].num_features]
        C = len(amax)
        wm = torch.stack([wmax_in(c, o, C) for c, o in cons]).amax(0)
        s = (amax.clamp_min(1e-6) ** alpha) / (wm.clamp_min(1e-8) ** (1 - alpha))
        s = s / s.median()
        old = M[f"{b}.{nm}"]
        new = torch.nn.InstanceNorm2d(C, eps=old.eps, affine=True)
        new.weight.data = 1 / s; new.bias.data.zero_()
        parent = M[b]; setattr(parent, nm, new)
        for c, o in cons: scale_in(c, o, C, s)
    # 3. transposed convs' outputs (no norm after them): equalize through conv_block.conv1
    for j, u in enumerate(ups):
        t = f"{u}.transp_conv.conv"; m = stats[f"{u}.conv_block.conv1.conv"][0][: W(t).shape[1]]
        r = m.clamp_min(1e-6) / m.median()
        W(t).div_(r.view(1, -1, 1, 1)); scale_in(f"{u}.conv_block.conv1.conv", 0, len(r), r)

def export(model, path):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.cpu().eval(), (torch.zeros(1, 1, size, size),), buf, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    path.write_bytes(buf.getvalue())
tag = f"eq{alpha}_{int(outeq)}_{'-'.join(ops)}"
export(net, work / f"{tag}_fp32.onnx")
quant_pre_process(str(work / f"{tag}_fp32.onnx"), str(work / f"{tag}_pre.onnx"))
class R(CalibrationDataReader):
    def __init__(s): s.it = iter([{"image": x[None]} for x in cal])
    def get_next(s): return next(s.it, None)
quantize_static(str(work / f"{tag}_pre.onnx"), str(work / f"{tag}.onnx"), R(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops)
def sess(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
def run(s, x): return s.run(None, {"image": x})[0]
def labels(s): return np.concatenate([run(s, cine[i:i+1]).argmax(1) for i in range(len(cine))])
ref, eqf, q = sess(work / "pre.onnx"), sess(work / f"{tag}_pre.onnx"), sess(work / f"{tag}.onnx")
lr = labels(ref)
print(tag, "equalized fp32 vs fp32:", [round(d, 5) for d in label_dice(labels(eqf), lr, 4)],
      "max|dlogit| %.2e" % np.abs(run(eqf, cine[:2]) - run(ref, cine[:2])).max())
print(tag, "int8 vs fp32:", [round(d, 4) for d in label_dice(labels(q), lr, 4)])
def per_frame(s, n=6):
    x = cine[:1]; run(s, x); t = []
    for _ in range(n):
        b0 = time.perf_counter(); run(s, x); t.append(time.perf_counter() - b0)
    return statistics.median(t)
tr, tq = [], []
for _ in range(2): tr.append(per_frame(ref)); tq.append(per_frame(q))
print(tag, "fp32 %.0f ms int8 %.0f ms ratio %.2f" % (min(tr) * 1e3, min(tq) * 1e3, min(tq) / min(tr)))
