// The image page's player: the loop with the newest AI segmentation over it, at the file's
// frame rate; ED and ES marked on the slider, and every `[data-seek-frame]` link on the page
// (the LV area plot, the per-beat table) shows its frame here instead of reloading the page.
// Read-only: editing is the editor's, one click away at the frame shown.
import { init as initDicomLoader } from '@cornerstonejs/dicom-image-loader';
import { init as initCore, RenderingEngine, Enums as CoreEnums, imageLoader, cache } from '@cornerstonejs/core';
import * as tools from '@cornerstonejs/tools';
import {
  api, webglAvailable, frameImageIds, decodeMasks, frameRate, markPhases, prefetchFrames, Cine, showViewerState,
} from './common.js';

const { segmentation, Enums: ToolEnums } = tools;
const SEGMENTATION_ID = 'sonoloop-player-labels';
const VIEWPORT_ID = 'player';

const root = document.getElementById('sonoloop-player');
const config = JSON.parse(document.getElementById('player-config').textContent);
const $ = (selector) => document.querySelector(selector);

const state = { imageIds: [], labelIds: [], frame: 0, engine: null, cine: null };

function setViewerState(value, message = '') {
  showViewerState(root, $('#player-message'), value, message);
}

function viewport() {
  return state.engine.getViewport(VIEWPORT_ID);
}

// the frame's phase, when it is one of a measured beat's ED or ES frames
function phaseOf(index) {
  const names = [];
  config.beats.forEach((beat, i) => {
    if (beat.ed === index) names.push(`ED, beat ${i + 1}`);
    if (beat.es === index) names.push(`ES, beat ${i + 1}`);
  });
  return names.join(' · ');
}

// the LV area plot's cursor follows the frame shown
function moveCursor(index) {
  const svg = document.querySelector('svg.area-plot[data-x0]');
  if (!svg) return;
  let cursor = svg.querySelector('line.cursor');
  if (!cursor) {
    cursor = document.createElementNS('http://www.w3.org/2000/svg', 'line');
    cursor.classList.add('cursor');
    cursor.setAttribute('y1', svg.dataset.y0);
    cursor.setAttribute('y2', svg.dataset.y1);
    svg.appendChild(cursor);
  }
  const x0 = Number(svg.dataset.x0);
  const x1 = Number(svg.dataset.x1);
  const x = x0 + ((x1 - x0) * index) / Math.max(state.imageIds.length - 1, 1);
  cursor.setAttribute('x1', x.toFixed(1));
  cursor.setAttribute('x2', x.toFixed(1));
}

function setFrame(index) {
  const n = state.imageIds.length;
  index = Math.max(0, Math.min(n - 1, index));
  state.frame = index;
  if (viewport().getCurrentImageIdIndex() !== index) viewport().setImageIdIndex(index);
  $('#player-slider').value = String(index + 1);
  $('#player-frame').textContent = `${index + 1} / ${n}`;
  $('#player-phase').textContent = phaseOf(index);
  $('#player-edit').href = `${config.editor_url}?frame=${index + 1}`;
  root.dataset.frame = String(index + 1);
  moveCursor(index);
}

function play(on) {
  state.cine.play(on);
  $('#player-play').textContent = state.cine.playing ? 'Pause' : 'Play';
  root.dataset.playing = state.cine.playing ? 'true' : 'false';
}

function setOverlay(visible) {
  for (const s of config.structures) {
    segmentation.config.visibility.setSegmentIndexVisibility(VIEWPORT_ID, { segmentationId: SEGMENTATION_ID },
      s.value, visible);
  }
  state.engine.render();
}

async function setupViewport() {
  const element = $('#player-viewport');
  element.hidden = false;
  $('#frame-image').hidden = true;
  state.engine = new RenderingEngine('sonoloop-player');
  state.engine.setViewports([{
    viewportId: VIEWPORT_ID,
    type: CoreEnums.ViewportType.STACK,
    element,
    defaultOptions: { background: [0, 0, 0] },
  }]);
  await viewport().setStack(state.imageIds, state.frame);
  const images = imageLoader.createAndCacheDerivedLabelmapImages(state.imageIds);
  state.labelIds = images.map((image) => image.imageId);
  segmentation.addSegmentations([{
    segmentationId: SEGMENTATION_ID,
    representation: { type: ToolEnums.SegmentationRepresentations.Labelmap, data: { imageIds: state.labelIds } },
    config: { segments: Object.fromEntries(config.structures.map((s) => [s.value, { label: s.name }])) },
  }]);
  segmentation.addLabelmapRepresentationToViewportMap({ [VIEWPORT_ID]: [{ segmentationId: SEGMENTATION_ID }] });
  for (const s of config.structures) {
    segmentation.config.color.setSegmentIndexColor(VIEWPORT_ID, SEGMENTATION_ID, s.value, [...s.color, 255]);
  }
  segmentation.config.style.setStyle(
    { viewportId: VIEWPORT_ID, segmentationId: SEGMENTATION_ID, type: ToolEnums.SegmentationRepresentations.Labelmap },
    { renderFill: true, fillAlpha: 0.35, renderOutline: true, outlineWidth: 1, outlineOpacity: 1 },
  );
  element.addEventListener(CoreEnums.Events.STACK_NEW_IMAGE, (event) => {
    if (event.detail.imageIdIndex !== state.frame) setFrame(event.detail.imageIdIndex);
  });
}

function loadLabels(masks) {
  const size = config.rows * config.columns;
  state.labelIds.forEach((labelId, i) => {
    cache.getImage(labelId).voxelManager.setFromScalarData(new Uint8Array(masks.get(i) || new Uint8Array(size)));
  });
  segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(SEGMENTATION_ID);
}

function bindControls() {
  const slider = $('#player-slider');
  slider.disabled = false;
  slider.addEventListener('input', (event) => setFrame(Number(event.target.value) - 1));
  $('#player-play').disabled = state.imageIds.length < 2;
  $('#player-play').addEventListener('click', () => play(!state.cine.playing));
  $('#player-overlay').addEventListener('change', (event) => setOverlay(event.target.checked));
  markPhases($('#player-phases'), config.beats, state.imageIds.length, (index) => { play(false); setFrame(index); });
  // links that would reload the page at a frame (`?frame=N`) show it here instead
  document.addEventListener('click', (event) => {
    const link = event.target.closest('[data-seek-frame]');
    if (!link) return;
    event.preventDefault();
    play(false);
    setFrame(Number(link.dataset.seekFrame) - 1);
    root.scrollIntoView({ block: 'nearest' });
  });
  document.addEventListener('keydown', (event) => {
    if (event.target.closest('input[type=text], input[type=number], textarea, select')) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      ArrowRight: () => setFrame(state.frame + 1),
      ArrowLeft: () => setFrame(state.frame - 1),
      ' ': () => play(!state.cine.playing),
    };
    if (actions[event.key]) {
      actions[event.key]();
      event.preventDefault();
    }
  });
}

async function start() {
  if (!webglAvailable()) {
    // the still frame stays; the slider and the links still work by reloading the page
    setViewerState('error', 'This browser has WebGL turned off, and the player needs it to draw the '
      + 'segmentation: the still frame is shown instead. Turn on hardware acceleration to see the loop.');
    return;
  }
  state.imageIds = frameImageIds({ urls: { wadouri: config.wadouri }, number_of_frames: config.frames });
  state.frame = Math.max(0, Math.min(state.imageIds.length - 1, Number(config.frame || 1) - 1));
  initDicomLoader({ maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1) });
  await initCore();
  tools.init();
  const masks = api(config.masks_api).then((payload) => decodeMasks(payload, config.rows * config.columns));
  await setupViewport();
  loadLabels(await masks);
  state.cine = new Cine({
    frames: state.imageIds.length,
    fps: frameRate(state.imageIds[0]),
    current: () => state.frame,
    show: setFrame,
    element: $('#player-viewport'),
    drawn: (fps) => { root.dataset.playbackFps = fps.toFixed(1); },
  });
  $('#player-fps').textContent = `${state.cine.fps.toFixed(0)} frames per second, as in the file`;
  bindControls();
  setFrame(state.frame);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  state.engine.render();
  root.dataset.readyMs = String(Math.round(performance.now()));
  setViewerState('ready');
  if (state.imageIds.length > 1) {
    const ms = await prefetchFrames(state.imageIds, (loaded) => { root.dataset.framesLoaded = String(loaded); });
    root.dataset.framesLoadedMs = String(ms);
  }
}

start().catch((error) => {
  const detail = error && (error.message || (error.error && error.error.message) || error.status);
  console.error('player failed', error);
  $('#player-viewport').hidden = true;
  $('#frame-image').hidden = false;
  setViewerState('error', `The loop could not be shown: ${detail || 'the image could not be loaded'}. `
    + 'The still frame is shown instead.');
});
