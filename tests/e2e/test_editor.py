"""The segmentation editor in headless Debian chromium, on the real 120-frame echo cine
segmented by the shipped model: drawn overlay, brush / per-structure eraser / undo, save,
reload, the stored masks checked through the API; cine; roles."""

from __future__ import annotations

import io
import subprocess
import time

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread

from sonoloop.ml.engines import cpu_has_native_bf16
from sonoloop.web.annotations.document import rle_decode
from tests.conftest import ADMIN_PASSWORD, make_server, require_tools, sonoloop_bin
from tests.e2e.test_browser import CHROMIUM_ARGS, wait_until
from tests.e2e.test_pipeline import send, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
AUTH = ("admin", ADMIN_PASSWORD)
BRUSH = 10  # Cornerstone's brush size: a radius in world units, image pixels for this uncalibrated cine
READY = "document.querySelector('#sonoloop-editor').dataset.viewerState"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_tools("chromium", "storescu")
    # an engine without a compile warm-up; the engine does not matter to the editor. Eager bf16
    # only where the CPU computes bf16 natively: emulated, one frame takes many seconds.
    engine = "bf16" if cpu_has_native_bf16() else "onnx"
    srv = make_server(tmp_path_factory.mktemp("editor"), SONOLOOP_AUTO_ANALYSIS="1",
                      SONOLOOP_INFERENCE_ENGINE=engine).start()
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def cine(server, samples):
    send(server, samples["cine_jpeg"], "-xy")
    uid = dcmread(samples["cine_jpeg"], stop_before_pixels=True).SOPInstanceUID
    analysis = wait_for_job(server, uid, timeout=600)
    assert analysis["jobs"][0]["status"] == "done", analysis
    return uid


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    instance = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
    yield instance
    instance.close()


def log_in(browser, server, username, password):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/studies/")
    return page, errors


def open_editor(page, server, uid) -> float:
    began = time.monotonic()
    page.goto(f"{server.url}/instances/{uid}/editor/")
    wait_until(page, f"['ready', 'error'].includes({READY})", timeout=60_000)
    elapsed = time.monotonic() - began
    state = page.get_attribute("#sonoloop-editor", "data-viewer-state")
    assert state == "ready", page.inner_text("#viewer-message")
    return elapsed


def colour_counts(png: bytes) -> dict[str, int]:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "LV": int(((r > 120) & (r > g + 50) & (r > b + 50)).sum()),
        "MYO": int(((g > 100) & (g > r + 40) & (g > b + 40)).sum()),
        "LA": int(((b > 120) & (b > r + 40) & (b > g + 20)).sum()),
        "image": int(((r > 40) & (abs(r - g) < 12) & (abs(g - b) < 12)).sum()),
    }


def ai_frame(server, uid, frame, rows, columns) -> np.ndarray:
    masks = requests.get(f"{server.url}/api/instances/{uid}/results/1/masks", auth=AUTH, timeout=60).json()
    return rle_decode(masks["masks"][str(frame)]["counts"], rows, columns, {1, 2, 3})


def tube(shape, start, end, radius) -> np.ndarray:
    """Pixels within ``radius`` of the segment start→end (image x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= radius


def save_difference(path, ai, stored):
    """For a person looking at a failure: AI labels dimmed, changed pixels yellow, erased ones magenta."""
    picture = np.array([[0, 0, 0], [120, 30, 30], [30, 100, 30], [30, 30, 120]], np.uint8)[ai]
    picture[stored != ai] = (255, 255, 0)
    picture[(stored != ai) & (stored == 0)] = (255, 0, 255)
    Image.fromarray(picture).save(path)
    print(f"difference picture: {path}")


def polygon_mask(shape, corners, grow=0):
    """Pixels whose centres lie inside the axis-aligned rectangle ``corners`` grown by ``grow``."""
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    return (xx >= min(xs) - grow) & (xx <= max(xs) + grow) & (yy >= min(ys) - grow) & (yy <= max(ys) + grow)


def trace(page, selector, columns, corners):
    """Draw a closed outline through ``corners`` (image x, y) with the mouse held down."""
    box = page.locator(selector).bounding_box()
    scale = box["width"] / columns
    to_page = lambda p: (box["x"] + p[0] * scale, box["y"] + p[1] * scale)  # noqa: E731
    page.mouse.move(*to_page(corners[0]), steps=4)
    page.mouse.down()
    for corner in [*corners[1:], corners[0]]:
        page.mouse.move(*to_page(corner), steps=10)
    page.mouse.up()


def drag(page, selector, columns, start, end):
    """A stroke from ``start`` to ``end`` (image x, y) like a hand makes one: glide in, press, move, release."""
    box = page.locator(selector).bounding_box()  # after any scrolling the clicks caused
    scale = box["width"] / columns  # the 4:3 viewport shows the whole 4:3 image
    to_page = lambda p: (box["x"] + p[0] * scale, box["y"] + p[1] * scale)  # noqa: E731
    page.mouse.move(*to_page(start), steps=6)
    page.wait_for_timeout(50)  # the brush cursor follows the pointer before the press
    page.mouse.down()
    for t in np.linspace(0, 1, 12)[1:]:
        page.mouse.move(*to_page((start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))))
    page.mouse.up()


def test_paint_erase_undo_save_reload_and_the_stored_masks_differ_exactly_where_the_strokes_went(
        server, cine, browser, tmp_path):
    info = requests.get(f"{server.url}/api/instances/{cine}", auth=AUTH, timeout=30).json()
    rows, columns = info["rows"], info["columns"]
    page, errors = log_in(browser, server, "admin", ADMIN_PASSWORD)
    ready_seconds = open_editor(page, server, cine)
    print(f"\neditor ready for the 120-frame cine: {ready_seconds:.2f} s "
          f"(page's own clock: {page.get_attribute('#sonoloop-editor', 'data-ready-ms')} ms)")

    # Cornerstone's brush size is a radius in world units: image pixels, this loop being uncalibrated
    assert page.inner_text("#brush-size-value") == "radius 12 px"
    # the image and all three structures are drawn
    page.wait_for_timeout(300)
    overlay = colour_counts(page.locator("#viewport-overlay").screenshot())
    original = colour_counts(page.locator("#viewport-original").screenshot())
    assert min(overlay["LV"], overlay["MYO"], overlay["LA"]) > 200, overlay
    assert original["image"] > 2000 and original["LV"] < overlay["LV"], original  # outlines only on the left
    screenshot(page, "editor", tmp_path)
    # the two images are as large as fits with the frame slider on screen (together about half
    # the window's width before), at 1600×1000 and at 1280×800
    for width, height in ((1600, 1000), (1280, 800)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(200)
        boxes = [page.locator(f"#viewport-{v}").bounding_box() for v in ("original", "overlay")]
        slider = page.locator("#frame-slider").bounding_box()
        assert sum(b["width"] for b in boxes) > (0.8 if width == 1600 else 0.6) * width, (width, boxes)
        assert slider["y"] + slider["height"] <= height and slider["y"] > boxes[0]["y"] + boxes[0]["height"], (width, boxes, slider)
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.wait_for_timeout(200)

    # keyboard stepping to frame 5
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.get_attribute("#sonoloop-editor", "data-frame") == "5"

    ai = ai_frame(server, cine, 5, rows, columns)
    lv_y, lv_x = [float(v.mean()) for v in np.nonzero(ai == 1)]
    page.evaluate(f"document.querySelector('#brush-size').value = '{BRUSH}';"
                  "document.querySelector('#brush-size').dispatchEvent(new Event('input'))")

    brush = ((lv_x, lv_y), (lv_x - 70, lv_y))  # LV painted leftwards across MYO into the background
    erase_undone = ((lv_x + 10, lv_y), (lv_x + 80, lv_y))  # MYO erased on the right, then undone
    erase_kept = ((lv_x, lv_y - 25), (lv_x, lv_y - 110))  # MYO erased towards the apex
    page.keyboard.press("1")  # LV
    page.keyboard.press("b")  # brush
    assert page.get_attribute("#sonoloop-editor", "data-tool") == "Brush"
    drag(page, "#viewport-overlay", columns, *brush)
    page.keyboard.press("2")  # MYO
    page.keyboard.press("e")  # eraser
    assert page.is_checked("input[name=structure][value='2']")
    drag(page, "#viewport-overlay", columns, *erase_undone)
    page.keyboard.press("Control+z")
    drag(page, "#viewport-overlay", columns, *erase_kept)

    # contour fill: an outline drawn on frame 7 becomes LA inside
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    page.keyboard.press("c")
    outline = [(70, 330), (150, 330), (150, 410), (70, 410)]
    trace(page, "#viewport-overlay", columns, outline)

    page.click("#save")
    wait_until(page, "document.querySelector('#sonoloop-editor').dataset.savedVersion === '1'", timeout=30_000)
    assert "Saved annotation v1" in page.inner_text("#editor-status")

    page.reload()
    wait_until(page, f"{READY} === 'ready'", timeout=60_000)
    assert page.locator("#annotation-list tbody tr[data-version='1']").count() == 1
    assert "draft" in page.inner_text("#annotation-list tbody tr[data-version='1']")
    page.click("#annotation-list tbody tr[data-version='1'] button:text('Open')")
    wait_until(page, "document.querySelector('#sonoloop-editor').dataset.openedVersion === '1'")
    assert page.get_attribute("#sonoloop-editor", "data-frame") == "5"
    assert not errors, errors

    summary = requests.get(f"{server.url}/api/instances/{cine}/annotations", auth=AUTH, timeout=30).json()
    annotation = summary["annotations"][0]
    assert annotation["frames"] == [5, 7] and annotation["author"] == "admin"
    assert annotation["started_from"]["result_version"] == 1
    document = requests.get(annotation["url"], auth=AUTH, timeout=30).json()["document"]
    stored = rle_decode(document["masks"]["5"]["counts"], rows, columns, {1, 2, 3})
    changed = stored != ai
    save_difference(tmp_path / "difference.png", ai, stored)

    # the brush radius plus rounding (an earlier test took the size for an on-screen diameter,
    # which held only while the viewport showed the image at about half its size)
    slack = BRUSH + 3
    near_brush, near_erase = tube(ai.shape, *brush, slack), tube(ai.shape, *erase_kept, slack)
    off = changed & ~(near_brush | near_erase)
    assert changed.any() and not off.any(), f"{off.sum()} pixels changed off the strokes, at {np.argwhere(off)[:5]}"
    core_brush = tube(ai.shape, *brush, 2)
    assert (stored[core_brush] == 1).all(), "the brush stroke did not paint LV along its path"
    assert ((ai == 2) & core_brush).any() and ((ai == 0) & core_brush).any()  # it crossed MYO and background
    erased = changed & near_erase & ~near_brush
    assert erased.any() and (ai[erased] == 2).all() and (stored[erased] == 0).all(), "the eraser took more than MYO"
    assert not (tube(ai.shape, *erase_kept, 2) & (stored == 2)).any(), "MYO left on the eraser's path"
    undone = tube(ai.shape, *erase_undone, slack) & ~near_brush
    assert (ai[undone] == 2).sum() > 50 and (stored[undone] == ai[undone]).all(), "the undone stroke was kept"
    before, after = ai_frame(server, cine, 7, rows, columns), rle_decode(document["masks"]["7"]["counts"], rows, columns,
                                                                          {1, 2, 3})
    inside = polygon_mask(ai.shape, outline)
    edge = polygon_mask(ai.shape, outline, grow=2) & ~polygon_mask(ai.shape, outline, grow=-2)
    assert (after[inside & ~edge] == 3).all() and not ((after != before) & ~(inside | edge)).any()
    agreement = annotation["agreement"]["dice"]
    assert 0.5 < agreement["LV"] < 1 and 0.5 < agreement["MYO"] < 1 and 0.5 < agreement["LA"] < 1
    page.close()


def screenshot(page, name: str, tmp_path, full_page: bool = False):
    """Into SONOLOOP_SCREENSHOTS when it is set (the README's pictures come from such a run)."""
    import os
    from pathlib import Path

    folder = Path(os.environ.get("SONOLOOP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def test_the_worklist_shows_the_analysed_loop_and_the_review_filter_finds_it_once_submitted(
        server, cine, browser, tmp_path):
    import json

    from sonoloop.web.annotations.document import CLASSES, rle_encode

    info = requests.get(f"{server.url}/api/instances/{cine}", auth=AUTH, timeout=30).json()
    rows, columns = info["rows"], info["columns"]
    page, errors = log_in(browser, server, "admin", ADMIN_PASSWORD)  # lands on the worklist
    row = page.locator("#study-table tbody tr", has=page.locator(".ai-state"))
    assert row.count() == 1
    ai_cell = row.locator(".ai-state")
    assert ai_cell.get_attribute("class").split()[-1] in ("ai-done", "ai-unreliable"), ai_cell.inner_text()
    ef = row.locator(".ef").inner_text()
    assert "%" in ef or "not reported" in ef, ef
    assert "none" in row.locator(".annotation-state").inner_text() or "draft" in row.locator(".annotation-state").inner_text()
    screenshot(page, "worklist", tmp_path)

    # an expert's annotation of frame 1, submitted for review
    body = {"schema_version": 1, "rows": rows, "columns": columns, "number_of_frames": info["number_of_frames"],
            "classes": {str(k): v for k, v in CLASSES.items()}, "frames": [1],
            "masks": {"1": {"encoding": "rle", "counts": rle_encode(ai_frame(server, cine, 1, rows, columns))}},
            "started_from_result": 1}
    saved = requests.post(f"{server.url}/api/instances/{cine}/annotations", data=json.dumps(body), auth=AUTH,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert saved.status_code == 201, saved.text
    submitted = requests.post(f"{saved.json()['url']}/status", data=json.dumps({"status": "submitted"}), auth=AUTH,
                              headers={"Content-Type": "application/json"}, timeout=30)
    assert submitted.status_code == 200, submitted.text

    page.select_option("#worklist-show", "needs-review")
    page.click("form.search button")
    page.wait_for_url("**show=needs-review**")
    rows_shown = page.locator("#study-table tbody tr")
    assert rows_shown.count() == 1 and "submitted" in rows_shown.first.locator(".annotation-state").inner_text()
    page.select_option("#worklist-show", "ef-below-40")
    page.click("form.search button")
    page.wait_for_url("**show=ef-below-40**")
    reliable_ef = float(ef.split("%")[0]) if "%" in ef and "unreliable" not in ef else None
    if reliable_ef is not None and reliable_ef < 40:
        assert page.locator("#study-table tbody tr .ef").count() == 1
    else:
        assert "No study matches" in page.inner_text("#study-table")
    assert not errors, errors
    page.close()

    # another reviewer: the review queue lists it, the editor opens it, Approve takes it off the queue
    subprocess.run([sonoloop_bin(), "manage", "roles", "grant", "rita", "reviewer", "--create"], env=server.env,
                   input="reviewer-pass-1\n", text=True, check=True, capture_output=True)
    page, errors = log_in(browser, server, "rita", "reviewer-pass-1")
    page.click("header nav a:text('Review')")
    queued = page.locator("#review-table tbody tr[data-annotation]")
    assert queued.count() == 1 and "admin" in queued.first.inner_text()
    screenshot(page, "review-queue", tmp_path)
    queued.first.locator("a:text('Open')").click()
    wait_until(page, f"{READY} === 'ready'", timeout=60_000)
    version = saved.json()["version"]
    wait_until(page, f"document.querySelector('#sonoloop-editor').dataset.openedVersion === '{version}'")
    # the AI result it started from on the left (filled, no longer outlines), the annotation on the right
    wait_until(page, "document.querySelector('#sonoloop-editor').dataset.comparing === '1'")
    assert page.is_checked("#compare") and page.inner_text("#caption-original") == "AI result v1"
    page.wait_for_timeout(300)
    left = colour_counts(page.locator("#viewport-original").screenshot())
    right = colour_counts(page.locator("#viewport-overlay").screenshot())
    assert min(left["LV"], left["MYO"], left["LA"]) > 200, left
    assert abs(left["LV"] - right["LV"]) < 0.05 * right["LV"], (left, right)  # frame 1 was kept as the AI drew it
    assert page.inner_text("#frame-agreement") == "Dice on this frame: LV 1.000 · MYO 1.000 · LA 1.000"
    screenshot(page, "review", tmp_path)
    page.click(f"#annotation-list tbody tr[data-version='{version}'] button:text('Approve')")
    wait_until(page, f"document.querySelector(\"#annotation-list tbody tr[data-version='{version}']\")"
                     ".className === 'approved'", timeout=30_000)
    page.goto(f"{server.url}/review/")
    assert "Nothing waits for review." in page.inner_text("#review-table")
    assert not errors, errors
    page.close()


PLAYER = "document.querySelector('#sonoloop-player').dataset"


def test_the_image_page_plays_the_loop_with_the_overlay_and_shows_ed_and_es_in_place(server, cine, browser,
                                                                                    tmp_path):
    analysis = requests.get(f"{server.url}/api/instances/{cine}/analysis", auth=AUTH, timeout=30).json()
    beats = analysis["results"][0]["measurements"]["beats"]
    assert len(beats) >= 2, "the 120-frame loop holds several measured beats"
    page, errors = log_in(browser, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server.url}/instances/{cine}/")
    wait_until(page, f"['ready', 'error'].includes({PLAYER}.viewerState)", timeout=60_000)
    assert page.get_attribute("#sonoloop-player", "data-viewer-state") == "ready", page.inner_text("#player-message")
    assert page.locator("#frame-image").is_hidden() and page.locator("#player-viewport").is_visible()

    page.wait_for_timeout(300)
    shown = colour_counts(page.locator("#player-viewport").screenshot())
    assert min(shown["LV"], shown["MYO"], shown["LA"]) > 200 and shown["image"] > 2000, shown
    page.uncheck("#player-overlay")
    page.wait_for_timeout(300)
    hidden = colour_counts(page.locator("#player-viewport").screenshot())
    assert hidden["LV"] < shown["LV"] / 10 and hidden["image"] > shown["image"], hidden
    page.check("#player-overlay")

    # ED on the slider, ES in the per-beat table: the frame changes in place (no reload)
    url = page.url
    page.locator("#player-phases .phase.ed").first.click()
    assert page.get_attribute("#sonoloop-player", "data-frame") == str(beats[0]["ed"] + 1)
    assert "ED, beat 1" in page.inner_text("#player-phase")
    es = beats[1]["es"] + 1
    page.locator(f'#beats a[data-seek-frame="{es}"]').click()
    assert page.get_attribute("#sonoloop-player", "data-frame") == str(es) and page.url == url
    assert "ES, beat 2" in page.inner_text("#player-phase")
    cursor = page.locator("svg.area-plot line.cursor")
    assert cursor.count() == 1
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "image-page", tmp_path, full_page=True)

    # cine at the file's rate, then one click to the editor at the frame shown
    wait_until(page, f"{PLAYER}.framesLoaded === '120'", timeout=60_000)
    page.click("#player-play")
    page.wait_for_timeout(1500)
    page.click("#player-play")
    frame = int(page.get_attribute("#sonoloop-player", "data-frame"))
    assert frame != es and float(page.get_attribute("#sonoloop-player", "data-playback-fps") or 0) > 0
    page.click("#player-edit")
    wait_until(page, f"{READY} === 'ready'", timeout=60_000)
    assert page.get_attribute("#sonoloop-editor", "data-frame") == str(frame)
    assert not errors, errors
    page.close()


def test_cine_plays_at_the_files_frame_rate(server, cine, browser, samples):
    frame_time = float(dcmread(samples["cine_jpeg"], stop_before_pixels=True).get("FrameTime", 0) or 0)
    page, errors = log_in(browser, server, "admin", ADMIN_PASSWORD)
    open_editor(page, server, cine)
    file_fps = 1000 / frame_time if frame_time else 30
    assert int(page.input_value("#fps")) == round(file_fps)
    wait_until(page, "document.querySelector('#sonoloop-editor').dataset.framesLoaded === '120'",
                           timeout=60_000)
    clock = "[performance.now(), Number(document.querySelector('#sonoloop-editor').dataset.frame)]"
    page.click("#play")
    page.wait_for_timeout(500)
    t0, f0 = page.evaluate(clock)
    page.wait_for_timeout(3000)
    t1, f1 = page.evaluate(clock)
    drawn = float(page.get_attribute("#sonoloop-editor", "data-playback-fps"))
    page.click("#play")
    advanced, due = (f1 - f0) % 120, (t1 - t0) / 1000 * file_fps
    print(f"\ncine: {advanced} frames in {(t1 - t0) / 1000:.2f} s (file rate {file_fps:.1f} fps: {due:.0f} due); "
          f"{drawn:.1f} frames drawn per second")
    assert abs(advanced - due) <= 0.1 * due + 2, "the loop does not keep the file's timing"
    assert drawn > 0
    assert not errors, errors
    page.close()


def test_a_viewer_sees_the_editor_but_cannot_save(server, cine, browser):
    subprocess.run([sonoloop_bin(), "manage", "roles", "grant", "vic", "viewer", "--create"], env=server.env,
                   input="viewer-pass-1\n", text=True, check=True, capture_output=True)
    page, _ = log_in(browser, server, "vic", "viewer-pass-1")
    open_editor(page, server, cine)
    assert page.locator("#save").is_disabled()
    status = page.evaluate("""async () => {
        const config = JSON.parse(document.getElementById('editor-config').textContent);
        const r = await fetch(config.annotations_api, {method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json', 'X-CSRFToken': config.csrf_token},
            body: JSON.stringify({schema_version: 1, frames: [1], masks: {}})});
        return [r.status, (await r.json()).error];
    }""")
    assert status[0] == 403 and "annotator role" in status[1]
    response = requests.post(f"{server.url}/api/instances/{cine}/annotations", json={"schema_version": 1},
                             auth=("vic", "viewer-pass-1"), timeout=30)
    assert response.status_code == 403
    page.close()


def test_without_webgl_the_page_says_so(server, cine, playwright):
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=[*CHROMIUM_ARGS, "--disable-3d-apis"])
    page, _ = log_in(browser, server, "admin", ADMIN_PASSWORD)
    page.goto(f"{server.url}/instances/{cine}/editor/")
    wait_until(page, f"{READY} === 'error'", timeout=30_000)
    message = page.inner_text("#viewer-message")
    assert "WebGL" in message and page.locator("#viewer-message").is_visible()
    browser.close()
