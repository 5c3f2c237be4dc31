"""QAT experiment (issue 15, item 4): can fine-tuning under simulated ONNX Runtime QDQ int8 make
int8 labels agree with fp32's? Run on the GPU machine of session 31 (report.md) as:

    python3 qat.py DATA.npz 60 1e-4 task,kd  &&  python3 qat.py DATA.npz 60 3e-5 kd

DATA.npz comes from pack.py. Self-contained so that it runs where Sonoloop's dependencies are
not installed: plain PyTorch (a replica of the shipped MONAI DynUNet with the same parameter
names, checked equal to it to 0.0 on random input), numpy and safetensors.
- task: QAT on the task (Dice + cross-entropy, flips, gain, gamma, speckle, noise); judged
  int8 against its own fp32.
- kd: QAT distilled from the shipped model's fp32 logits (+ 0.1 × the task loss); judged
  int8 against the shipped model's fp32.
- agree (session 33): the fp32 path learns the shipped model's hard labels and the int8 path its
  own fp32 labels, so that a new model version whose int8 agrees with its own fp32 could be
  shipped if its validation Dice holds; judged int8 against its own fp32.
- margin (session 33): as agree, int8's agreement weighted 5x, plus a hinge widening the fp32
  top-two logit margin to 2.
Every --epochs/6 epochs it prints label Dice on the cine (int8 vs own fp32, int8 vs shipped
fp32) and CAMUS validation Dice against the experts, fp32 and int8; log.jsonl is that output."""
import json, os, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import load_file, save_file

FILTERS = [32, 64, 128, 256, 320, 320]

class Conv(nn.Module):
    def __init__(s, conv): super().__init__(); s.conv = conv
    def forward(s, x): return s.conv(x)

class Basic(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = Conv(nn.Conv2d(cin, cout, 3, stride, 1, bias=False)); s.conv2 = Conv(nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        s.lrelu = nn.LeakyReLU(0.01); s.norm1 = nn.InstanceNorm2d(cout); s.norm2 = nn.InstanceNorm2d(cout)
    def forward(s, x):
        x = s.lrelu(s.norm1(s.conv1(x))); return s.lrelu(s.norm2(s.conv2(x)))

class Up(nn.Module):
    def __init__(s, cin, cout):
        super().__init__(); s.transp_conv = Conv(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)); s.conv_block = Basic(2 * cout, cout, 1)
    def forward(s, x, skip): return s.conv_block(torch.cat((s.transp_conv(x), skip), 1))

class UNet(nn.Module):
    def __init__(s, f=FILTERS, out=4):
        super().__init__()
        s.input_block = Basic(1, f[0], 1)
        s.downsamples = nn.ModuleList([Basic(f[i], f[i + 1], 2) for i in range(len(f) - 2)])
        s.bottleneck = Basic(f[-2], f[-1], 2)
        s.upsamples = nn.ModuleList([Up(f[-1 - i], f[-2 - i]) for i in range(len(f) - 1)])
        s.output_block = nn.Module(); s.output_block.conv = Conv(nn.Conv2d(f[0], out, 1, bias=True))
    def forward(s, x):
        skips = [s.input_block(x)]
        for d in s.downsamples: skips.append(d(skips[-1]))
        x = s.bottleneck(skips[-1])
        for u, sk in zip(s.upsamples, reversed(skips)): x = u(x, sk)
        return s.output_block.conv(x)

def load_v3(path):
    state = {k: v.float() for k, v in load_file(path).items()}
    net = UNet(); missing = net.load_state_dict(state, strict=False)
    assert not missing.missing_keys, missing
    return net

def convs(net): return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): return torch.round(x)
    @staticmethod
    def backward(ctx, g): return g

class FakeQuant:
    """ORT QDQ as quantize_static(per_channel=True, QUInt8 activations MinMax incl. 0, QInt8 symmetric weights)."""
    def __init__(s, net):
        s.net, s.convs, s.ranges, s.enabled, s.calibrating, s.handles = net, convs(net), {}, False, False, []
        for m in s.convs: s.handles.append(m.register_forward_pre_hook(s.pre(m)))
        s.orig_forward = {}
        for m in s.convs:
            s.orig_forward[m] = m.forward
            m.forward = s.wrap(m)
    def pre(s, m):
        def f(mod, inp):
            x = inp[0]
            if s.calibrating:
                lo, hi = float(x.min()), float(x.max()); a, b = s.ranges.get(m, (0.0, 0.0)); s.ranges[m] = (min(a, lo), max(b, hi))
            if not s.enabled: return None
            lo, hi = s.ranges[m]; lo = min(lo, 0.0); hi = max(hi, 0.0); scale = (hi - lo) / 255; zp = round(-lo / scale)
            q = torch.clamp(RoundSTE.apply(x / scale) + zp, 0, 255)
            return ((q - zp) * scale,)
        return f
    def wrap(s, m):
        transposed = isinstance(m, nn.ConvTranspose2d)
        def forward(x):
            if not s.enabled: return s.orig_forward[m](x)
            w = m.weight; d = 1 if transposed else 0
            dims = tuple(k for k in range(w.dim()) if k != d)
            sc = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127
            wq = RoundSTE.apply(w / sc).clamp(-127, 127) * sc
            if transposed: return F.conv_transpose2d(x, wq, m.bias, m.stride, m.padding, m.output_padding)
            return F.conv2d(x, wq, m.bias, m.stride, m.padding)
        return forward
    @torch.no_grad()
    def calibrate(s, xs, bs=8):
        s.ranges.clear(); s.calibrating, was = True, s.enabled; s.enabled = False; s.net.eval()
        for i in range(0, len(xs), bs): s.net(xs[i:i + bs])
        s.calibrating, s.enabled = False, was

def dice_loss_ce(logits, y):
    ce = F.cross_entropy(logits, y)
    p = logits.softmax(1); oh = F.one_hot(y, 4).permute(0, 3, 1, 2).float()
    inter = (p * oh).sum((2, 3)); den = p.sum((2, 3)) + oh.sum((2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (den + 1e-5)).mean()
    return ce + dice

def label_dice(a, b, classes=4):
    out = []
    for c in range(1, classes):
        pa, pb = a == c, b == c; s = pa.sum() + pb.sum()
        out.append(float(2 * (pa & pb).sum() / s) if s else 1.0)
    return out

@torch.no_grad()
def predict(net, xs, bs=8):
    net.eval(); return torch.cat([net(xs[i:i + bs]).argmax(1) for i in range(0, len(xs), bs)])

def augment(x, y, g):
    if torch.rand(1, generator=g).item() < 0.5: x, y = x.flip(-1), y.flip(-1)
    n = x.shape[0]; dev = x.device
    gain = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.8, 1.2); gamma = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.8, 1.25)
    x = (x.clamp(0, 1) ** gamma * gain).clamp(0, 1)
    x = x * (1 + 0.1 * torch.randn_like(x)).clamp(0.5, 1.5) + 0.01 * torch.randn_like(x)
    return x.clamp(0, 1), y

def run(mode, data, v3path, epochs, lr, out, log):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.benchmark = True
    torch.manual_seed(0); g = torch.Generator().manual_seed(0)
    tx = torch.from_numpy(data["training_x"]).float().div(255)[:, None].to(dev); ty = torch.from_numpy(data["training_y"]).long().to(dev)
    vx = torch.from_numpy(data["validation_x"]).float().div(255)[:, None].to(dev); vy = data["validation_y"]
    cine = torch.from_numpy(data["cine"]).float()[:, None].to(dev)
    cal = tx[::4]
    teacher = load_v3(v3path).to(dev).eval()
    t_cine = predict(teacher, cine).cpu().numpy()
    student = load_v3(v3path).to(dev); fq = FakeQuant(student)
    opt = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=1e-5)
    def report(epoch, loss):
        fq.enabled = False; s32_cine = predict(student, cine).cpu().numpy(); s32_val = predict(student, vx).cpu().numpy()
        fq.calibrate(cal); fq.enabled = True
        s8_cine = predict(student, cine).cpu().numpy(); s8_val = predict(student, vx).cpu().numpy()
        r = {"mode": mode, "lr": lr, "epoch": epoch, "loss": round(loss, 4),
             "cine_int8_vs_own_fp32": [round(d, 4) for d in label_dice(s8_cine, s32_cine)],
             "cine_int8_vs_v3_fp32": [round(d, 4) for d in label_dice(s8_cine, t_cine)],
             "cine_own_fp32_vs_v3_fp32": [round(d, 4) for d in label_dice(s32_cine, t_cine)],
             "val_dice_fp32": [round(d, 4) for d in np.mean([label_dice(p, t) for p, t in zip(s32_val, vy)], 0)],
             "val_dice_int8": [round(d, 4) for d in np.mean([label_dice(p, t) for p, t in zip(s8_val, vy)], 0)]}
        print(json.dumps(r), flush=True); log.write(json.dumps(r) + "\n"); log.flush()
        return r
    report(0, 0.0)
    bs = 8
    for epoch in range(1, epochs + 1):
        fq.calibrate(cal); fq.enabled = True; student.train()
        for grp in opt.param_groups: grp["lr"] = lr * (1 - (epoch - 1) / epochs) ** 0.9
        perm = torch.randperm(len(tx), generator=g); losses = []
        for i in range(0, len(tx) - bs + 1, bs):
            idx = perm[i:i + bs].to(dev); x, y = augment(tx[idx], ty[idx], g)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
                logits = student(x)
            if mode == "task":
                loss = dice_loss_ce(logits, y)
            elif mode in ("agree", "margin"):
                # The network itself made less hesitant (report §2b): its fp32 path learns the
                # shipped model's hard labels (cross-entropy keeps widening the margins), and its
                # int8 path (the forward above) learns its own fp32 path's labels. margin weights
                # that 5x and adds a hinge widening the fp32 top-two logit margin to at least 2.
                fq.enabled = False
                own = student(x)
                fq.enabled = True
                with torch.no_grad(): hard = teacher(x).argmax(1)
                weight = 5 if mode == "margin" else 1
                loss = F.cross_entropy(own, hard) + weight * F.cross_entropy(logits, own.detach().argmax(1)) \
                    + 0.1 * dice_loss_ce(own, y)
                if mode == "margin":
                    top2 = own.topk(2, 1).values
                    loss = loss + F.relu(2.0 - (top2[:, 0] - top2[:, 1])).mean()
            else:
                with torch.no_grad(): tl = teacher(x)
                loss = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(tl, 1), log_target=True, reduction="batchmean") / (384 * 384) \
                    + 0.1 * dice_loss_ce(logits, y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); losses.append(float(loss.detach()))
        if epoch % max(1, epochs // 6) == 0 or epoch == epochs: report(epoch, float(np.mean(losses)))
    fq.enabled = False
    state = {k: v.detach().half().cpu().contiguous() for k, v in student.state_dict().items()}
    keys = sorted(state); half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, f"{out}/{mode}{lr:g}_a.safetensors")
    save_file({k: state[k] for k in keys[half:]}, f"{out}/{mode}{lr:g}_b.safetensors")

if __name__ == "__main__":
    if len(sys.argv) < 5: sys.exit(__doc__)
    out = os.environ.get("OUT", "/tmp/q8/out"); os.makedirs(out, exist_ok=True)
    data = dict(np.load(sys.argv[1]))
    epochs = int(sys.argv[2]); lr = float(sys.argv[3]); modes = sys.argv[4].split(",")
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else None  # a quick try on the CPU
    if limit:
        for k in ("training_x", "training_y"): data[k] = data[k][:limit]
        for k in ("validation_x", "validation_y"): data[k] = data[k][:4]
        data["cine"] = data["cine"][:4]
    with open(f"{out}/log.jsonl", "a") as log:
        for mode in modes:
            t0 = time.time(); run(mode, data, "src/sonoloop/models/default/weights.safetensors", epochs, lr, out, log)
            print(mode, "took %.0f s" % (time.time() - t0), flush=True)
