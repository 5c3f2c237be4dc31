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
import { rleEncode, fillPolygon } from './rle.js';
import {
  api as request, webglAvailable, frameImageIds, decodeMasks as decode, frameRate, markPhases, prefetchFrames, Cine,
  showViewerState,
} from './common.js';

const {
  BrushTool, PanTool, ZoomTool, WindowLevelTool, StackScrollTool, ToolGroupManager, segmentation,
  Enums: ToolEnums, utilities: toolUtils,
} = tools;

const SEGMENTATION_ID = 'sonoloop-labels';
const AI_SEGMENTATION_ID = 'sonoloop-ai'; // the AI result beside an opened annotation
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
  tool: 'Brush',
  structure: 1,
  aiResult: null, // {version, masks: Map(frame index -> Uint8Array)}
  opened: null, // annotation summary being edited from
  touched: new Set(), // 0-based frames edited or accepted since the last load
  comparing: null, // {version, masks} of the AI result shown on the left instead of outlines
};

function setViewerState(value, message = '') {
  showViewerState(root, $('#viewer-message'), value, message);
}

function say(message, isError = false) {
  const box = $('#editor-status');
  box.textContent = message;
  box.classList.toggle('error', isError);
}

function api(url, options = {}) {
  return request(url, options, config.csrf_token);
}

// -- images and labelmaps ------------------------------------------------------------------

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
  return decode(payload, state.rows * state.columns);
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
  for (const id of VIEWPORTS) colour(id, SEGMENTATION_ID);
  showOutlinesOnOriginal();
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
    if (state.comparing) showFrameAgreement();
  });
}

let editingStroke = false;

function colour(viewportId, segmentationId) {
  for (const s of STRUCTURES) {
    segmentation.config.color.setSegmentIndexColor(viewportId, segmentationId, s.value, [...s.color, 255]);
  }
}

// the original keeps its pixels visible: outlines only; the overlay is filled
function showOutlinesOnOriginal() {
  segmentation.config.style.setStyle(
    { viewportId: 'original', segmentationId: SEGMENTATION_ID, type: ToolEnums.SegmentationRepresentations.Labelmap },
    { renderFill: false, renderOutline: true, outlineWidth: 1, outlineOpacity: 0.9 },
  );
}

// -- review: the AI result on the left, the opened annotation on the right, the same frame --

async function compareWithAi(on) {
  const version = state.opened && state.opened.started_from && state.opened.started_from.result_version;
  $('#compare').checked = Boolean(on && version);
  if (on && !version) {
    say('This annotation was not started from an AI result: there is nothing to compare it with.', true);
    return;
  }
  const type = ToolEnums.SegmentationRepresentations.Labelmap;
  if (state.comparing) {
    segmentation.removeLabelmapRepresentation('original', AI_SEGMENTATION_ID, true);
    segmentation.removeSegmentation(AI_SEGMENTATION_ID);
    state.comparing = null;
  }
  if (on) {
    const masks = await aiMasks(version);
    const labelIds = imageLoader.createAndCacheDerivedLabelmapImages(state.imageIds).map((image) => image.imageId);
    const size = state.rows * state.columns;
    labelIds.forEach((id, i) => cache.getImage(id).voxelManager.setFromScalarData(new Uint8Array(masks.get(i) || new Uint8Array(size))));
    segmentation.removeLabelmapRepresentation('original', SEGMENTATION_ID, true);
    segmentation.addSegmentations([{
      segmentationId: AI_SEGMENTATION_ID,
      representation: { type, data: { imageIds: labelIds } },
      config: { segments: Object.fromEntries(STRUCTURES.map((s) => [s.value, { label: s.name }])) },
    }]);
    segmentation.addLabelmapRepresentationToViewport('original', [{ segmentationId: AI_SEGMENTATION_ID }]);
    colour('original', AI_SEGMENTATION_ID);
    segmentation.config.style.setStyle({ viewportId: 'original', segmentationId: AI_SEGMENTATION_ID, type },
      { renderFill: true, fillAlpha: Number($('#opacity').value) / 100, renderOutline: true, outlineWidth: 1,
        outlineOpacity: 1 });
    toolGroup.removeViewports('sonoloop', 'original'); // the AI's side is for looking, not painting
    state.comparing = { version, masks };
    $('#caption-original').textContent = `AI result v${version}`;
    $('#caption-overlay').textContent = `Annotation v${state.opened.version} by ${state.opened.author}`;
  } else {
    segmentation.addLabelmapRepresentationToViewport('original', [{ segmentationId: SEGMENTATION_ID }]);
    colour('original', SEGMENTATION_ID);
    showOutlinesOnOriginal();
    if (!toolGroup.getViewportIds().includes('original')) toolGroup.addViewport('original', 'sonoloop');
    $('#caption-original').textContent = 'Original (outlines)';
    $('#caption-overlay').textContent = 'AI segmentation';
  }
  segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, state.structure);
  root.dataset.comparing = state.comparing ? String(state.comparing.version) : '';
  showFrameAgreement();
  engine.render();
}

// Dice of this frame's annotation against the AI, per structure, while comparing
function showFrameAgreement() {
  const box = $('#frame-agreement');
  if (!state.comparing || !state.touched.has(state.frame)) {
    box.textContent = state.comparing ? 'frame not in the annotation' : '';
    root.dataset.frameDice = '';
    return;
  }
  const ai = state.comparing.masks.get(state.frame) || new Uint8Array(state.rows * state.columns);
  const mine = readFrame(state.frame);
  const parts = STRUCTURES.map((s) => {
    let both = 0;
    let sum = 0;
    for (let i = 0; i < mine.length; i++) {
      const a = ai[i] === s.value;
      const b = mine[i] === s.value;
      if (a && b) both += 1;
      if (a) sum += 1;
      if (b) sum += 1;
    }
    return `${s.name} ${sum ? ((2 * both) / sum).toFixed(3) : '–'}`;
  });
  box.textContent = `Dice on this frame: ${parts.join(' · ')}`;
  root.dataset.frameDice = parts.join(',');
}

function setOpacity(alpha) {
  const filled = [['overlay', SEGMENTATION_ID]];
  if (state.comparing) filled.push(['original', AI_SEGMENTATION_ID]);
  for (const [viewportId, segmentationId] of filled) {
    segmentation.config.style.setStyle(
      { viewportId, segmentationId, type: ToolEnums.SegmentationRepresentations.Labelmap },
      { renderFill: true, fillAlpha: alpha, renderOutline: true, outlineWidth: 1, outlineOpacity: 1 },
    );
  }
  engine.render();
}

// Cornerstone's brush size is a radius in world units: millimetres where the image says its
// pixel spacing, image pixels otherwise (most echo: the spacing is in the ultrasound regions)
function setBrushSize(size) {
  toolUtils.segmentation.setBrushSizeForToolGroup(TOOL_GROUP_ID, size);
  const plane = metaData.get('imagePlaneModule', state.imageIds[0]) || {};
  const unit = plane.rowPixelSpacing && !plane.usingDefaultValues ? 'mm' : 'px';
  $('#brush-size-value').textContent = `radius ${size} ${unit}`;
  root.dataset.brushUnit = unit;
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
      if (state.tool !== 'Contour' || event.button !== 0 || (state.comparing && id === 'original')) return;
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
  if (state.comparing) showFrameAgreement();
}

function markTouched(index) {
  state.touched.add(index);
  $('#touched-count').textContent = String(state.touched.size);
  if (index === state.frame) $('#frame-touched').hidden = false;
}

let cine = null;

function play(on) {
  cine.play(on);
  $('#play').textContent = cine.playing ? 'Pause' : 'Play';
  root.dataset.playing = cine.playing ? 'true' : 'false';
}

function setupCine() {
  cine = new Cine({
    frames: state.imageIds.length,
    fps: frameRate(state.imageIds[0]),
    current: () => state.frame,
    show: (index) => setFrame(index),
    element: $('#viewport-overlay'),
    drawn: (fps) => {
      root.dataset.playbackFps = fps.toFixed(1);
      $('#playback-fps').textContent = `${fps.toFixed(0)} fps drawn`;
    },
  });
}

async function loadAllFrames() {
  const n = state.imageIds.length;
  const ms = await prefetchFrames(state.imageIds, (loaded) => {
    root.dataset.framesLoaded = String(loaded);
    if (loaded % 10 === 0 || loaded === n) {
      $('#frames-loaded').textContent = loaded === n ? '' : `loading frames ${loaded}/${n}`;
    }
  });
  root.dataset.framesLoadedMs = String(ms);
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
  $('#compare-wrap').hidden = !detail.started_from;
  if (state.comparing) await compareWithAi(true); // the AI result this annotation started from
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
  $('#play').addEventListener('click', () => play(!cine.playing));
  $('#fps').value = String(Math.round(cine.fps));
  $('#fps').addEventListener('change', (event) => {
    cine.setFps(Math.max(1, Math.min(120, Number(event.target.value) || cine.fps)));
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
  $('#compare').addEventListener('change', (event) => compareWithAi(event.target.checked));
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
    ' ': () => play(!cine.playing),
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
  setupCine();
  bindControls();
  const masks = await aiPromise;
  if (result) state.aiResult = { version: result.version, masks };
  loadLabels(masks);
  markPhases($('#phase-marks'), info.measurements && info.measurements.beats, state.imageIds.length, setFrame);
  const asked = Number(config.open_frame) || 1; // "Edit this frame" on the image page
  setFrame(Math.min(state.imageIds.length, Math.max(1, asked)) - 1);
  showAnnotations(info.annotations || []);
  const wanted = (info.annotations || []).find((a) => String(a.version) === String(config.open_version));

  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  engine.render();
  if (wanted) {
    await openAnnotation(wanted);
    if (config.compare) await compareWithAi(true); // from the review queue
  }
  root.dataset.readyMs = String(Math.round(performance.now()));
  setViewerState('ready');
  if (state.imageIds.length > 1) await loadAllFrames();
}

start().catch((error) => {
  const detail = error && (error.message || (error.error && error.error.message) || error.status);
  console.error('editor failed', error);
  setViewerState('error', `The editor could not start: ${detail || 'the image could not be loaded'}. `
    + 'Reload the page; if it happens again, tell the administrator.');
});
