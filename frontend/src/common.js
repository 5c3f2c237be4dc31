// What the editor and the image page's player share: the JSON API, WebGL detection, frame
// image ids, AI masks, the file's frame rate, ED/ES marks, background frame loading and cine.
import { Enums as CoreEnums, imageLoader, metaData } from '@cornerstonejs/core';
import { rleDecode } from './rle.js';

export async function api(url, options = {}, csrfToken = '') {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (options.body) {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRFToken'] = csrfToken;
  }
  const response = await fetch(url, { credentials: 'same-origin', ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

// `data-viewer-state` on the root (loading / ready / error, which the tests and benchmarks
// wait for) and the message a person reads
export function showViewerState(root, box, value, message = '') {
  root.dataset.viewerState = value;
  box.textContent = message;
  box.hidden = !message;
  box.className = value === 'error' ? 'viewer-message error' : 'viewer-message';
}

export function webglAvailable() {
  try {
    const canvas = document.createElement('canvas');
    return Boolean(canvas.getContext('webgl2') || canvas.getContext('webgl'));
  } catch {
    return false;
  }
}

export function frameImageIds(info) {
  const base = `wadouri:${info.urls.wadouri}`;
  const n = info.number_of_frames || 1;
  if (n <= 1) return [base];
  return Array.from({ length: n }, (_, i) => `${base}&frame=${i + 1}`);
}

// {frame (1-based): {counts}} → Map(0-based frame → Uint8Array of rows × columns)
export function decodeMasks(payload, size) {
  const masks = new Map();
  for (const [frame, entry] of Object.entries(payload.masks)) {
    masks.set(Number(frame) - 1, rleDecode(entry.counts, size));
  }
  return masks;
}

// frames per second as the file says (Frame Time, else Cine Rate), 30 when it says neither
export function frameRate(imageId) {
  const cine = metaData.get('cineModule', imageId) || {};
  const frameTime = Number(cine.frameTime || 0);
  if (frameTime > 0) return 1000 / frameTime;
  if (Number(cine.cineRate) > 0) return Number(cine.cineRate);
  return 30;
}

// ED and ES buttons along a frame slider: one pair per measured beat
export function markPhases(container, beats, frames, seek) {
  container.replaceChildren();
  if (!beats || frames < 2) return;
  for (const beat of beats) {
    for (const [key, label] of [['ed', 'ED'], ['es', 'ES']]) {
      if (beat[key] === undefined || beat[key] === null) continue;
      const mark = document.createElement('button');
      mark.type = 'button';
      mark.className = `phase ${key}`;
      mark.textContent = label;
      mark.title = `${label}: frame ${beat[key] + 1}`;
      mark.dataset.frame = String(beat[key] + 1);
      mark.style.left = `${(beat[key] / (frames - 1)) * 100}%`;
      mark.addEventListener('click', () => seek(beat[key]));
      container.appendChild(mark);
    }
  }
}

// Decode every frame once, in the background after the first is shown: cine and the
// slider then draw from the cache instead of waiting for each frame. Returns the time taken.
export async function prefetchFrames(imageIds, progress) {
  let loaded = 0;
  const queue = imageIds.slice();
  const began = performance.now();
  const worker = async () => {
    while (queue.length) {
      const imageId = queue.shift();
      try {
        await imageLoader.loadAndCacheImage(imageId);
      } catch (error) {
        console.warn('frame not loaded', imageId, error && (error.error || error));
      }
      loaded += 1;
      progress(loaded);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  return Math.round(performance.now() - began);
}

// Cine that keeps the file's timing: each animation frame shows the frame due at that moment,
// so a slow display drops frames instead of slowing the loop. `drawn` reports the frames
// actually rendered per second (Cornerstone's IMAGE_RENDERED on `element`), once a second.
export class Cine {
  constructor({ frames, fps, current, show, element, drawn }) {
    Object.assign(this, { frames, fps, current, show, element, drawn });
    this.playing = false;
    this.animation = null;
    this.timer = null;
    this.counted = null;
  }

  toggle() {
    this.play(!this.playing);
  }

  play(on) {
    if (on === this.playing || this.frames < 2) return;
    this.playing = on;
    if (!on) {
      cancelAnimationFrame(this.animation);
      return;
    }
    const began = performance.now();
    const first = this.current();
    const tick = (now) => {
      if (!this.playing) return;
      const due = (first + Math.floor(((now - began) * this.fps) / 1000)) % this.frames;
      if (due !== this.current()) this.show(due);
      this.animation = requestAnimationFrame(tick);
    };
    this.animation = requestAnimationFrame(tick);
    this.measure();
  }

  setFps(fps) {
    this.fps = fps;
    if (this.playing) {
      this.play(false);
      this.play(true);
    }
  }

  // one counter at a time: a pause and play within the same second (a new fps) replaces it
  measure() {
    this.stopMeasuring();
    let count = 0;
    this.counted = () => { count += 1; };
    this.element.addEventListener(CoreEnums.Events.IMAGE_RENDERED, this.counted);
    let last = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      this.drawn((count * 1000) / (now - last));
      count = 0;
      last = now;
      if (!this.playing) this.stopMeasuring();
    }, 1000);
  }

  stopMeasuring() {
    clearInterval(this.timer);
    if (this.counted) this.element.removeEventListener(CoreEnums.Events.IMAGE_RENDERED, this.counted);
    this.counted = null;
  }
}
