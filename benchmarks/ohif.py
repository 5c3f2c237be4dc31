"""Stock OHIF v3 drawing Sonoloop's 120-frame echo cine in headless chromium: frames as stored
(what OHIF's ``transfer-syntax=*`` allows) against decoded frames (Sonoloop before issue 15), in
the same run.

    .venv/bin/python benchmarks/ohif.py [--rounds 2] [--ohif DIR]

Starts `sonoloop serve` on loopback (SQLite, no task worker) and stores pydicom-data's 120-frame
JPEG cine with C-STORE. A small reverse proxy then puts OHIF's built viewer (fetched by
`scripts/setup --test` with `npm pack @ohif/app@3.13.2`; its `app-config.js` replaced by
`docs/ohif/app-config.js`) and Sonoloop on one origin, as the README's deployment does; the
browser logs in to Sonoloop, and OHIF's DICOMweb requests carry that session. Chromium (Debian's,
SwiftShader WebGL) opens ``/viewer?StudyInstanceUIDs=…`` in a fresh context per round. For the
baseline round the proxy drops ``transfer-syntax=*`` from OHIF's Accept headers, so Sonoloop sends
decoded frames, as it did before.

Printed per way (medians over the rounds):
- *boot*: navigation → OHIF's first request for the study's metadata (OHIF's own start-up);
- *first image*: that metadata request → the cine's first frame drawn on OHIF's canvas (pixels
  read back), and the same from navigation;
- *cine*: the first frame request → all 120 frame responses complete (OHIF prefetches the stack);
- the frame bytes sent, against the stored file's size.
Issue 15's targets: first image ≤ 1 s, whole cine ≤ 3 s, bytes ≤ 1.5× the file.
"""

from __future__ import annotations

import argparse
import http.client
import mimetypes
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests
from pydicom import dcmread

from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path

sys.path.insert(0, str(Path(__file__).parent))
from load import PASSWORD, _stop, start  # noqa: E402
from viewer_frames import store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"
DEFAULT_OHIF = ROOT / ".cache" / f"ohif-{OHIF_VERSION}" / "package" / "dist"
APP_CONFIG = ROOT / "docs" / "ohif" / "app-config.js"
# what the proxy hands to Sonoloop; everything else is OHIF's static viewer
SONOLOOP_PATHS = ("/dicomweb/", "/login/", "/static/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
FRAME = re.compile(r"/frames/(\d+)$")


class Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, upstream_port: int):
        super().__init__(("127.0.0.1", 0), Handler)
        self.dist = dist.resolve()
        self.upstream_port = upstream_port
        self.decoded = False  # the baseline: drop `transfer-syntax=*`
        self.local = threading.local()
        self.lock = threading.Lock()
        self.events: list[tuple[str, float, float, int]] = []  # (path, sent, done, bytes)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def upstream(self) -> http.client.HTTPConnection:
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        return self.local.connection


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.handle_request()

    do_POST = do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_GET

    def handle_request(self):
        path = urlsplit(self.path).path
        if path.startswith(SONOLOOP_PATHS):
            self.forward(path)
        else:
            self.serve_file(path)

    def forward(self, path: str):
        server: Proxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if server.decoded and "Accept" in headers:
            headers["Accept"] = re.sub(r";\s*transfer-syntax=\*", "", headers["Accept"])
        sent = time.monotonic()
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed meanwhile
            connection = server.upstream()
            try:
                connection.request(self.command, self.path, body, headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                server.local.connection = None
                if attempt == 2:
                    raise
        with server.lock:
            server.events.append((path, sent, time.monotonic(), len(data)))
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def serve_file(self, path: str):
        server: Proxy = self.server
        if path == "/app-config.js":
            file = APP_CONFIG
        else:
            file = (server.dist / path.lstrip("/")).resolve()
            if not file.is_file() or server.dist not in file.parents:
                file = server.dist / "index.html"  # OHIF's own routes (/viewer, …)
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store" if file.name in ("index.html", "app-config.js") else "max-age=3600")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def log_in(proxy_url: str) -> list[dict]:
    """Sonoloop's login form, through the proxy: the session cookie for the browser."""
    session = requests.Session()
    session.get(f"{proxy_url}/login/", timeout=30).raise_for_status()
    answer = session.post(f"{proxy_url}/login/", timeout=30, allow_redirects=False, data={
        "username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{proxy_url}/login/"})
    assert answer.status_code == 302, f"login failed: {answer.status_code} {answer.text[:300]}"
    return [{"name": c.name, "value": c.value, "url": proxy_url} for c in session.cookies]


# true once an OHIF canvas shows the image: over 2 % of a sparse grid of its pixels lit (read back
# from its 2D canvas; the centre of an apical view is the dark cavity)
DRAWN = """() => [...document.querySelectorAll('canvas.cornerstone-canvas')].some((c) => {
  if (!c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, seen = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { seen++; if (d[i] + d[i + 1] + d[i + 2] > 90) lit++; }
  return lit > 0.02 * seen;
})"""


def one_round(browser, proxy: Proxy, study: str, frames: int) -> dict:
    with proxy.lock:
        proxy.events.clear()
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_cookies(log_in(proxy.url))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    began = time.monotonic()
    page.goto(f"{proxy.url}/viewer?StudyInstanceUIDs={study}")
    page.wait_for_function(DRAWN, polling="raf", timeout=120_000)
    drawn = time.monotonic()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with proxy.lock:
            done = {m.group(1) for p, *_ in proxy.events if (m := FRAME.search(p))}
        if len(done) >= frames:
            break
        time.sleep(0.05)
    with proxy.lock:
        events = list(proxy.events)
    context.close()
    metadata = [e for e in events if e[0].endswith("/metadata")]
    frame_events = [e for e in events if FRAME.search(e[0])]
    loaded = {FRAME.search(e[0]).group(1) for e in frame_events}
    if len(loaded) < frames:
        raise SystemExit(f"OHIF fetched {len(loaded)} of {frames} frames in 180 s; page errors: {errors[:3]}")
    asked = min(e[1] for e in metadata) if metadata else began
    return {
        "boot": asked - began,
        "first": drawn - asked,
        "first_from_navigation": drawn - began,
        "cine": max(e[2] for e in frame_events) - min(e[1] for e in frame_events),
        "bytes": sum(e[3] for e in frame_events),
        "requests": len(frame_events),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ohif", type=Path, default=DEFAULT_OHIF, help="OHIF's built viewer (package/dist)")
    args = parser.parse_args(argv)
    if not (args.ohif / "index.html").is_file():
        print(f"no OHIF viewer at {args.ohif}: `scripts/setup --test` fetches it with npm "
              f"(npm pack @ohif/app@{OHIF_VERSION}); or pass --ohif DIR", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="sonoloop-ohif-"))
    process = proxy = None
    try:
        process, dicom_port, http_port = start(work / "data")
        path = sample_path(ECHO_CINE_JPEG)
        store(dicom_port, path)
        ds = dcmread(path, stop_before_pixels=True)
        frames, size = int(ds.NumberOfFrames), path.stat().st_size
        proxy = Proxy(args.ohif, http_port)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            try:
                one_round(browser, proxy, ds.StudyInstanceUID, frames)  # warm: chromium's and the OS's caches
                for name, decoded in (("stored frames", False), ("decoded (before)", True)):
                    proxy.decoded = decoded
                    runs = [one_round(browser, proxy, ds.StudyInstanceUID, frames) for _ in range(args.rounds)]
                    result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                    results[name] = result
                    print(f"{name:17s} boot {result['boot']:5.2f} s  first image {result['first']:5.2f} s "
                          f"({result['first_from_navigation']:5.2f} s from navigation)  "
                          f"all {frames} frames {result['cine']:6.2f} s  {result['bytes'] / 1e6:6.1f} MB "
                          f"({result['bytes'] / size:5.2f}× the {size / 1e6:.1f} MB file)")
            finally:
                browser.close()
        now, before = results["stored frames"], results["decoded (before)"]
        print(f"ratio stored/decoded: first image {now['first'] / before['first']:.2f}, "
              f"whole cine {now['cine'] / before['cine']:.2f}, bytes {now['bytes'] / before['bytes']:.3f}")
        ok = now["first"] <= 1.0 and now["cine"] <= 3.0 and now["bytes"] <= 1.5 * size
        print(f"issue 15 targets (first image ≤ 1 s after OHIF asks, cine ≤ 3 s, bytes ≤ 1.5× file): "
              f"{'met' if ok else 'NOT met'}")
        return 0
    finally:
        if proxy is not None:
            proxy.shutdown()
        if process is not None:
            _stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
