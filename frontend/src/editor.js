// Sonoloop's echo editor: the original loop and the AI segmentation side by side, a shared
// frame slider and cine, per-structure brush / eraser / contour editing with undo, and the
// instance's annotation versions. A thin client: every rule (roles, statuses, schema
// checks, Dice) is the server's; nothing about the patient is kept in browser storage.
import { init as initDicomLoader } from '@cornerstonejs/dicom-image-loader';
import {
  init as initCore,
  RenderingEngine,
  Enums as CoreEnums,
  imageLoader,
  metaData,
  cache,
  eventTarget,
  utilities as coreUtils,
} from '@cornerstonejs/core';
import * as tools from '@cornerstonejs/tools';
import { rleDecode, rleEncode, fillPolygon } from './rle.js';

const {
  BrushTool, PanTool, ZoomTool, WindowLevelTool, StackScrollTool, ToolGroupManager, segmentation,
  Enums: ToolEnums, utilities: toolUtils,
} = tools;

const SEGMENTATION_ID = 'sonoloop-labels';
const TOOL_GROUP_ID = 'sonoloop-editor';
const VIEWPORTS = ['original', 'overlay'];
const history = coreUtils.HistoryMemo.DefaultHistoryMemo;

const root = document.getElementById('sonoloop-editor');
const config = JSON.parse(document.getElementById('editor-config').textContent);
// value, name and colour of each structure: the server's one class map (annotations/document.py)
const STRUCTURES = config.structures;
const $ = (selector) => root.querySelector(selector);

const state = {
  info: null,
  imageIds: [],
  labelIds: [],
  rows: 0,
  columns: 0,
  frame: 0,
  playing: false,
  fps: 30,
  tool: 'Brush',
  structure: 1,
  aiResult: null, // {version, masks: Map(frame index -> Uint8Array)}
  opened: null, // annotation summary being edited from
  touched: new Set(), // 0-based frames edited or accepted since the last load
};

function setViewerState(value, message = '') {
  root.dataset.viewerState = value;
  const box = $('#viewer-message');
  box.textContent = message;
  box.hidden = !message;
  box.className = value === 'error' ? 'viewer-message error' : 'viewer-message';
}

function say(message, isError = false) {
  const box = $('#editor-status');
  box.textContent = message;
  box.classList.toggle('error', isError);
}

async function api(url, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (options.body) {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRFToken'] = config.csrf_token;
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

function webglAvailable() {
  try {
    const canvas = document.createElement('canvas');
    return Boolean(canvas.getContext('webgl2') || canvas.getContext('webgl'));
  } catch {
    return false;
  }
}

// -- images and labelmaps ------------------------------------------------------------------

function frameImageIds(info) {
  const base = `wadouri:${info.urls.wadouri}`;
  const n = info.number_of_frames || 1;
  if (n <= 1) return [base];
  return Array.from({ length: n }, (_, i) => `${base}&frame=${i + 1}`);
}

function labelData(index) {
  return cache.getImage(state.labelIds[index]).voxelManager;
}

function readFrame(index) {
  return new Uint8Array(labelData(index).getScalarData());
}

function writeFrame(index, mask) {
  labelData(index).setFromScalarData(mask);
  segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(SEGMENTATION_ID);
}

// Replace a whole frame as one undoable step (AI reset, clear, contour fill).
function replaceFrame(index, mask, touched = true) {
  const before = readFrame(index);
  const after = new Uint8Array(mask);
  writeFrame(index, after);
  history.push({
    id: `frame-${index}-${Date.now()}`,
    operationType: 'labelmap-frame',
    restoreMemo: (undo) => {
      writeFrame(index, undo ? before : after);
      if (state.frame !== index) setFrame(index);
    },
  });
  if (touched) markTouched(index);
}

function decodeMasks(payload) {
  const size = state.rows * state.columns;
  const masks = new Map();
  for (const [frame, entry] of Object.entries(payload.masks)) {
    masks.set(Number(frame) - 1, rleDecode(entry.counts, size));
  }
  return masks;
}

function loadLabels(base, annotationMasks = null) {
  const size = state.rows * state.columns;
  for (let i = 0; i < state.labelIds.length; i++) {
    const mask = (annotationMasks && annotationMasks.get(i)) || (base && base.get(i)) || new Uint8Array(size);
    labelData(i).setFromScalarData(new Uint8Array(mask));
  }
  segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(SEGMENTATION_ID);
}

// -- viewports and tools -------------------------------------------------------------------

let engine;
let toolGroup;

function viewport(id) {
  return engine.getViewport(id);
}

async function setupViewports() {
  engine = new RenderingEngine('sonoloop');
  engine.setViewports(VIEWPORTS.map((id) => ({
    viewportId: id,
    type: CoreEnums.ViewportType.STACK,
    element: $(`#viewport-${id}`),
    defaultOptions: { background: [0, 0, 0] },
  })));
  await Promise.all(VIEWPORTS.map((id) => viewport(id).setStack(state.imageIds, 0)));

  const images = imageLoader.createAndCacheDerivedLabelmapImages(state.imageIds);
  state.labelIds = images.map((image) => image.imageId);
  segmentation.addSegmentations([{
    segmentationId: SEGMENTATION_ID,
    representation: { type: ToolEnums.SegmentationRepresentations.Labelmap, data: { imageIds: state.labelIds } },
    config: { segments: Object.fromEntries(STRUCTURES.map((s) => [s.value, { label: s.name }])) },
  }]);
  const representation = [{ segmentationId: SEGMENTATION_ID }];
  segmentation.addLabelmapRepresentationToViewportMap({ original: representation, overlay: representation });
  for (const id of VIEWPORTS) {
    for (const s of STRUCTURES) {
      segmentation.config.color.setSegmentIndexColor(id, SEGMENTATION_ID, s.value, [...s.color, 255]);
    }
  }
  const type = ToolEnums.SegmentationRepresentations.Labelmap;
  // the original keeps its pixels visible: outlines only; the overlay is filled
  segmentation.config.style.setStyle({ viewportId: 'original', segmentationId: SEGMENTATION_ID, type },
    { renderFill: false, renderOutline: true, outlineWidth: 1, outlineOpacity: 0.9 });
  setOpacity(Number($('#opacity').value) / 100);
  segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, state.structure);

  for (const Tool of [BrushTool, PanTool, ZoomTool, WindowLevelTool, StackScrollTool]) tools.addTool(Tool);
  toolGroup = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
  toolGroup.addTool(BrushTool.toolName, { activeStrategy: 'FILL_INSIDE_CIRCLE' });
  toolGroup.addToolInstance('Eraser', BrushTool.toolName, { activeStrategy: 'ERASE_INSIDE_CIRCLE' });
  for (const Tool of [PanTool, ZoomTool, WindowLevelTool, StackScrollTool]) toolGroup.addTool(Tool.toolName);
  for (const id of VIEWPORTS) toolGroup.addViewport(id, 'sonoloop');
  const { MouseBindings } = ToolEnums;
  toolGroup.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  toolGroup.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  toolGroup.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  selectTool('Brush', true);
  setBrushSize(Number($('#brush-size').value));

  for (const id of VIEWPORTS) {
    const element = $(`#viewport-${id}`);
    element.addEventListener(CoreEnums.Events.STACK_NEW_IMAGE, (event) => {
      const index = event.detail.imageIdIndex;
      if (index !== state.frame) setFrame(index, id);
    });
    element.addEventListener('contextmenu', (event) => event.preventDefault());
  }
  eventTarget.addEventListener(ToolEnums.Events.SEGMENTATION_DATA_MODIFIED, () => {
    if (editingStroke) markTouched(state.frame);
  });
}

let editingStroke = false;

function setOpacity(alpha) {
  segmentation.config.style.setStyle(
    { viewportId: 'overlay', segmentationId: SEGMENTATION_ID, type: ToolEnums.SegmentationRepresentations.Labelmap },
    { renderFill: true, fillAlpha: alpha, renderOutline: true, outlineWidth: 1, outlineOpacity: 1 },
  );
  engine.render();
}

function setBrushSize(size) {
  toolUtils.segmentation.setBrushSizeForToolGroup(TOOL_GROUP_ID, size);
  $('#brush-size-value').textContent = `${size}px`;
}

function lockOthers(lock) {
  // the eraser removes only the chosen structure: the other structures are locked meanwhile
  for (const s of STRUCTURES) {
    segmentation.segmentLocking.setSegmentIndexLocked(SEGMENTATION_ID, s.value, lock && s.value !== state.structure);
  }
}

function selectTool(name, force = false) {
  // re-activating the active brush makes Cornerstone paint a stray dab on the next stroke
  if (name === state.tool && !force) return;
  state.tool = name;
  const primary = [{ mouseButton: ToolEnums.MouseBindings.Primary }];
  for (const other of ['Brush', 'Eraser', WindowLevelTool.toolName]) {
    if (other !== name) toolGroup.setToolPassive(other, { removeAllBindings: true });
  }
  if (name === 'Brush' || name === 'Eraser') {
    toolGroup.setToolActive(name, { bindings: primary });
  } else if (name === 'WindowLevel') {
    toolGroup.setToolActive(WindowLevelTool.toolName, { bindings: primary });
  }
  lockOthers(name === 'Eraser');
  for (const button of root.querySelectorAll('[data-tool]')) {
    button.classList.toggle('active', button.dataset.tool === name);
  }
  root.dataset.tool = name;
}

function selectStructure(value) {
  state.structure = value;
  segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, value);
  lockOthers(state.tool === 'Eraser');
  for (const input of root.querySelectorAll('input[name=structure]')) input.checked = Number(input.value) === value;
}

function setVisible(value, visible) {
  for (const id of VIEWPORTS) {
    segmentation.config.visibility.setSegmentIndexVisibility(id, { segmentationId: SEGMENTATION_ID }, value, visible);
  }
  engine.render();
}

// -- contour fill: draw a closed outline, the inside becomes the chosen structure ----------
// Kept instead of Cornerstone3D 5.14's LabelMapEditWithContourTool, tried in chromium on this
// stack viewport: its undo is one step too, but it fills with the label under the stroke's start
// when the outline crosses labels, so an LV outline begun on the myocardium turned LV into
// myocardium (3,136 pixels on frame 7 of the test cine); here the inside is the chosen structure.

function setupContourTool() {
  for (const id of VIEWPORTS) {
    const element = $(`#viewport-${id}`);
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.classList.add('contour-layer');
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    svg.appendChild(line);
    element.appendChild(svg);
    let points = null;
    const at = (event) => {
      const box = element.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    element.addEventListener('pointerdown', (event) => {
      if (state.tool !== 'Contour' || event.button !== 0) return;
      event.preventDefault();
      event.stopPropagation();
      element.setPointerCapture(event.pointerId);
      points = [at(event)];
    }, true);
    element.addEventListener('pointermove', (event) => {
      if (!points) return;
      event.stopPropagation();
      points.push(at(event));
      line.setAttribute('points', points.map((p) => p.join(',')).join(' '));
    }, true);
    element.addEventListener('pointerup', (event) => {
      if (!points) return;
      event.stopPropagation();
      const outline = points;
      points = null;
      line.setAttribute('points', '');
      fillContour(id, outline);
    }, true);
  }
}

function fillContour(viewportId, canvasPoints) {
  const vp = viewport(viewportId);
  const imageId = state.imageIds[state.frame];
  const pixels = canvasPoints.map((p) => {
    const [x, y] = coreUtils.worldToImageCoords(imageId, vp.canvasToWorld(p));
    return [x, y];
  });
  const mask = readFrame(state.frame);
  if (fillPolygon(mask, state.columns, state.rows, pixels, state.structure) > 0) {
    replaceFrame(state.frame, mask);
    say(`Filled the outline as ${STRUCTURES.find((s) => s.value === state.structure).name} on frame ${state.frame + 1}.`);
  }
}

// -- frames and cine -----------------------------------------------------------------------

function setFrame(index, from = null) {
  const n = state.imageIds.length;
  index = Math.max(0, Math.min(n - 1, index));
  state.frame = index;
  for (const id of VIEWPORTS) {
    if (id !== from && viewport(id).getCurrentImageIdIndex() !== index) viewport(id).setImageIdIndex(index);
  }
  $('#frame-slider').value = String(index + 1);
  $('#frame-number').textContent = `${index + 1} / ${n}`;
  root.dataset.frame = String(index + 1);
  $('#frame-touched').hidden = !state.touched.has(index);
}

function markTouched(index) {
  state.touched.add(index);
  $('#touched-count').textContent = String(state.touched.size);
  if (index === state.frame) $('#frame-touched').hidden = false;
}

let cineTimer = null;
let cineFrame = null;

// Cine keeps the file's timing: each animation frame shows the frame due at that moment
// (both viewports in one render), so a slow display drops frames instead of slowing the loop.
function play(on) {
  if (on === state.playing || state.imageIds.length < 2) return;
  state.playing = on;
  $('#play').textContent = on ? 'Pause' : 'Play';
  root.dataset.playing = on ? 'true' : 'false';
  if (!on) {
    cancelAnimationFrame(cineFrame);
    clearInterval(cineTimer);
    return;
  }
  const n = state.imageIds.length;
  const began = performance.now();
  const first = state.frame;
  const tick = (now) => {
    if (!state.playing) return;
    const due = (first + Math.floor(((now - began) * state.fps) / 1000)) % n;
    if (due !== state.frame) setFrame(due);
    cineFrame = requestAnimationFrame(tick);
  };
  cineFrame = requestAnimationFrame(tick);
  measurePlayback();
}

// frames actually drawn per second while playing, for the page and for benchmarks
function measurePlayback() {
  let drawn = 0;
  const element = $('#viewport-overlay');
  const count = () => { drawn += 1; };
  element.addEventListener(CoreEnums.Events.IMAGE_RENDERED, count);
  let last = performance.now();
  clearInterval(cineTimer);
  cineTimer = setInterval(() => {
    const now = performance.now();
    const fps = (drawn * 1000) / (now - last);
    drawn = 0;
    last = now;
    root.dataset.playbackFps = fps.toFixed(1);
    $('#playback-fps').textContent = `${fps.toFixed(0)} fps drawn`;
    if (!state.playing) element.removeEventListener(CoreEnums.Events.IMAGE_RENDERED, count);
  }, 1000);
}

function frameRate() {
  const cine = metaData.get('cineModule', state.imageIds[0]) || {};
  const frameTime = Number(cine.frameTime || 0);
  if (frameTime > 0) return 1000 / frameTime;
  if (Number(cine.cineRate) > 0) return Number(cine.cineRate);
  return 30;
}

function markPhases(measurements) {
  const marks = $('#phase-marks');
  marks.replaceChildren();
  const n = state.imageIds.length;
  if (!measurements || !measurements.beats || n < 2) return;
  for (const beat of measurements.beats) {
    for (const [key, label] of [['ed', 'ED'], ['es', 'ES']]) {
      if (beat[key] === undefined || beat[key] === null) continue;
      const mark = document.createElement('button');
      mark.type = 'button';
      mark.className = `phase ${key}`;
      mark.textContent = label;
      mark.title = `${label}: frame ${beat[key] + 1}`;
      mark.style.left = `${(beat[key] / (n - 1)) * 100}%`;
      mark.addEventListener('click', () => setFrame(beat[key]));
      marks.appendChild(mark);
    }
  }
}

// Decode every frame once, in the background after the first is shown: cine and the
// slider then draw from the cache instead of waiting for each frame.
async function prefetchFrames() {
  let loaded = 0;
  const queue = state.imageIds.slice();
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
      root.dataset.framesLoaded = String(loaded);
      if (loaded % 10 === 0 || loaded === state.imageIds.length) {
        $('#frames-loaded').textContent = loaded === state.imageIds.length ? '' : `loading frames ${loaded}/${state.imageIds.length}`;
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  root.dataset.framesLoadedMs = String(Math.round(performance.now() - began));
}

// -- annotations ---------------------------------------------------------------------------

function annotationRow(a) {
  const row = document.createElement('tr');
  row.dataset.version = String(a.version);
  row.className = a.status;
  const dice = a.agreement && a.agreement.dice
    ? Object.entries(a.agreement.dice).map(([k, v]) => `${k} ${v === null ? '–' : v.toFixed(3)}`).join(', ')
    : '—';
  const model = a.started_from ? `${a.started_from.model} ${a.started_from.model_version} (AI v${a.started_from.result_version})` : 'from scratch';
  const cells = [
    `v${a.version}${a.parent_version ? ` ← v${a.parent_version}` : ''}`,
    a.author,
    new Date(a.created_at).toLocaleString(),
    a.frame_count <= 6 ? a.frames.join(', ') : `${a.frame_count} frames`,
    a.status,
    model,
    dice,
  ];
  for (const text of cells) {
    const cell = document.createElement('td');
    cell.textContent = text;
    row.appendChild(cell);
  }
  const actions = document.createElement('td');
  const button = (label, handler) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.addEventListener('click', handler);
    actions.appendChild(b);
  };
  button('Open', () => openAnnotation(a));
  if (a.status === 'draft' && config.can_save) button('Submit', () => changeStatus(a, 'submitted'));
  if (a.status === 'submitted' && config.can_review) {
    button('Approve', () => changeStatus(a, 'approved'));
    button('Return', () => {
      // the annotator sees why in the annotation's history
      const note = window.prompt(`Why is v${a.version} returned to ${a.author}?`);
      if (note !== null) changeStatus(a, 'draft', note);
    });
  }
  if (a.status === 'approved' && config.can_review && !a.segmentation) button('Export SEG', () => exportSeg(a));
  row.appendChild(actions);
  return row;
}

function showAnnotations(list) {
  const body = $('#annotation-list tbody');
  body.replaceChildren(...list.map(annotationRow));
  $('#annotation-empty').hidden = list.length > 0;
}

async function refreshAnnotations() {
  const data = await api(config.annotations_api);
  showAnnotations(data.annotations);
  return data.annotations;
}

async function openAnnotation(a) {
  const detail = await api(a.url);
  const masks = decodeMasks(detail.document);
  let base = null;
  if (detail.started_from) {
    base = await aiMasks(detail.started_from.result_version);
  }
  loadLabels(base, masks);
  state.opened = detail;
  state.touched = new Set([...masks.keys()]);
  $('#touched-count').textContent = String(state.touched.size);
  $('#editing-from').textContent = `annotation v${detail.version} by ${detail.author} (${detail.status})`;
  root.dataset.openedVersion = String(detail.version);
  setFrame(detail.frames[0] - 1);
  say(`Opened annotation v${detail.version}; saving makes a new version.`);
}

async function changeStatus(a, status, note = '') {
  try {
    await api(`${config.annotation_api}${a.id}/status`, { method: 'POST', body: JSON.stringify({ status, note }) });
    say(`Annotation v${a.version} is now ${status}.`);
  } catch (error) {
    say(`Could not change v${a.version}: ${error.message}`, true);
  }
  await refreshAnnotations();
}

async function exportSeg(a) {
  try {
    const result = await api(`${config.annotation_api}${a.id}/export`, { method: 'POST', body: '{}' });
    say(`Annotation v${a.version} stored as DICOM SEG ${result.segmentation}.`);
  } catch (error) {
    say(`Could not export v${a.version}: ${error.message}`, true);
  }
  await refreshAnnotations();
}

async function save(status) {
  if (!config.can_save) {
    say('Saving needs the annotator role.', true);
    return;
  }
  const frames = [...state.touched].sort((x, y) => x - y);
  if (!frames.length) {
    say('Nothing to save: edit a frame, or press "Accept frame" to keep the AI result for it.', true);
    return;
  }
  const masks = {};
  for (const index of frames) masks[String(index + 1)] = { encoding: 'rle', counts: rleEncode(readFrame(index)) };
  const body = {
    schema_version: 1,
    sop_instance_uid: state.info.sop_instance_uid,
    rows: state.rows,
    columns: state.columns,
    number_of_frames: state.imageIds.length,
    classes: Object.fromEntries(STRUCTURES.map((s) => [String(s.value), s.name])),
    frames: frames.map((i) => i + 1),
    masks,
    status,
    started_from_result: state.opened ? (state.opened.started_from || {}).result_version || null
      : (state.aiResult ? state.aiResult.version : null),
    parent_version: state.opened ? state.opened.version : null,
  };
  $('#save').disabled = true;
  try {
    const saved = await api(config.annotations_api, { method: 'POST', body: JSON.stringify(body) });
    state.opened = { ...saved, started_from: saved.started_from };
    root.dataset.savedVersion = String(saved.version);
    $('#editing-from').textContent = `annotation v${saved.version} by ${saved.author} (${saved.status})`;
    say(`Saved annotation v${saved.version} (${saved.frame_count} frame${saved.frame_count === 1 ? '' : 's'}, ${saved.status}).`);
    await refreshAnnotations();
  } catch (error) {
    say(`Not saved: ${error.message}`, true);
  } finally {
    $('#save').disabled = false;
  }
}

async function aiMasks(version) {
  if (state.aiResult && state.aiResult.version === version) return state.aiResult.masks;
  const payload = await api(`${config.ai_masks_api}${version}/masks`);
  return decodeMasks(payload);
}

// -- page ----------------------------------------------------------------------------------

function describe(info) {
  const result = info.results && info.results[0];
  $('#overlay-source').textContent = result
    ? `AI result v${result.version}: ${result.model.name} ${result.model.version}`
    : 'no AI result yet: start from an empty labelmap';
  root.dataset.modelVersion = result ? `${result.model.name} ${result.model.version}` : '';
  const m = info.measurements;
  if (m && m.ef !== undefined && m.ef !== null) {
    $('#measurement-summary').textContent = `EF ${m.ef.toFixed(1)} % · ED frame ${m.ed_frame + 1} · ES frame ${m.es_frame + 1}`;
  }
}

function bindControls() {
  $('#frame-slider').max = String(state.imageIds.length);
  $('#frame-slider').addEventListener('input', (event) => setFrame(Number(event.target.value) - 1));
  $('#play').addEventListener('click', () => play(!state.playing));
  $('#fps').value = String(Math.round(state.fps));
  $('#fps').addEventListener('change', (event) => {
    state.fps = Math.max(1, Math.min(120, Number(event.target.value) || state.fps));
    if (state.playing) { play(false); play(true); }
  });
  for (const button of root.querySelectorAll('[data-tool]')) {
    button.addEventListener('click', () => selectTool(button.dataset.tool));
  }
  for (const input of root.querySelectorAll('input[name=structure]')) {
    input.addEventListener('change', () => selectStructure(Number(input.value)));
  }
  for (const input of root.querySelectorAll('input[data-visible]')) {
    input.addEventListener('change', () => setVisible(Number(input.dataset.visible), input.checked));
  }
  $('#brush-size').addEventListener('input', (event) => setBrushSize(Number(event.target.value)));
  $('#opacity').addEventListener('input', (event) => setOpacity(Number(event.target.value) / 100));
  $('#undo').addEventListener('click', () => history.undo());
  $('#redo').addEventListener('click', () => history.redo());
  $('#reset-ai').addEventListener('click', async () => {
    if (!state.aiResult) { say('There is no AI result for this image.', true); return; }
    replaceFrame(state.frame, state.aiResult.masks.get(state.frame) || new Uint8Array(state.rows * state.columns));
    say(`Frame ${state.frame + 1} set back to the AI result.`);
  });
  $('#clear-frame').addEventListener('click', () => {
    replaceFrame(state.frame, new Uint8Array(state.rows * state.columns));
    say(`Frame ${state.frame + 1} cleared.`);
  });
  $('#accept-frame').addEventListener('click', () => {
    markTouched(state.frame);
    say(`Frame ${state.frame + 1} is part of the annotation as it stands.`);
  });
  $('#save').addEventListener('click', () => save('draft'));
  $('#submit').addEventListener('click', () => save('submitted'));
  if (!config.can_save) {
    for (const id of ['#save', '#submit']) $(id).disabled = true;
    say('You can look, not save: saving annotations needs the annotator role.');
  }
  // a stroke is an edit of the frame shown; other data changes (loading, undo) are not
  for (const id of VIEWPORTS) {
    const element = $(`#viewport-${id}`);
    element.addEventListener('pointerdown', () => { editingStroke = state.tool === 'Brush' || state.tool === 'Eraser'; });
    window.addEventListener('pointerup', () => { setTimeout(() => { editingStroke = false; }, 0); });
  }
  document.addEventListener('keydown', onKey);
}

function onKey(event) {
  if (event.target.closest('input[type=text], input[type=number], textarea')) return;
  const ctrl = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (ctrl && key === 'z' && !event.shiftKey) { history.undo(); event.preventDefault(); return; }
  if (ctrl && (key === 'y' || (key === 'z' && event.shiftKey))) { history.redo(); event.preventDefault(); return; }
  if (ctrl) return;
  const actions = {
    arrowright: () => setFrame(state.frame + 1),
    arrowleft: () => setFrame(state.frame - 1),
    ' ': () => play(!state.playing),
    b: () => selectTool('Brush'),
    e: () => selectTool('Eraser'),
    c: () => selectTool('Contour'),
    w: () => selectTool('WindowLevel'),
    1: () => selectStructure(1),
    2: () => selectStructure(2),
    3: () => selectStructure(3),
  };
  const action = actions[key];
  if (action) { action(); event.preventDefault(); }
}

async function start() {
  setViewerState('loading', 'Loading the image…');
  if (!webglAvailable()) {
    setViewerState('error', 'This browser has WebGL turned off or unavailable, and the editor needs it to draw '
      + 'the segmentation and to paint. Turn on hardware acceleration (or use another browser); '
      + 'the instance page still shows the frames.');
    return;
  }
  const info = await api(config.instance_api);
  state.info = info;
  state.rows = info.rows;
  state.columns = info.columns;
  state.imageIds = frameImageIds(info);
  describe(info);

  initDicomLoader({ maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1) });
  await initCore();
  tools.init();

  const result = info.results && info.results[0];
  const aiPromise = result ? aiMasks(result.version) : Promise.resolve(null);
  await setupViewports();
  setupContourTool();
  state.fps = frameRate();
  bindControls();
  const masks = await aiPromise;
  if (result) state.aiResult = { version: result.version, masks };
  loadLabels(masks);
  markPhases(info.measurements);
  setFrame(0);
  showAnnotations(info.annotations || []);
  const wanted = (info.annotations || []).find((a) => String(a.version) === String(config.open_version));

  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  engine.render();
  if (wanted) await openAnnotation(wanted);
  root.dataset.readyMs = String(Math.round(performance.now()));
  setViewerState('ready');
  if (state.imageIds.length > 1) await prefetchFrames();
}

start().catch((error) => {
  const detail = error && (error.message || (error.error && error.error.message) || error.status);
  console.error('editor failed', error);
  setViewerState('error', `The editor could not start: ${detail || 'the image could not be loaded'}. `
    + 'Reload the page; if it happens again, tell the administrator.');
});
