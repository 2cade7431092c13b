// The page: reads model/model.json, starts the worker on WebGPU or WASM, opens images, collects prompts, draws
// the mask and offers it for download. Every failure ends as a message in the page (#message), never a blank page.
import { maskPng, masksJson } from './rle.js';

const MAX_SIDE = 4096; // px on the long side: the decoder returns full-size masks, four at a time
const MAX_BYTES = 64 * 1024 * 1024;
const MASK_RGBA = [30, 100, 220, 140];
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  config: null,
  backend: null,
  threads: 1,
  workers: {}, // role ('encoder', 'decoder') -> Worker
  imageId: 0,
  imageName: null,
  width: 0,
  height: 0,
  ready: false, // the worker has loaded the model
  encoded: false,
  points: [], // [x, y] in original pixels
  labels: [], // 1 positive, 0 negative
  box: null, // [x1, y1, x2, y2]
  history: [], // undo stack: {kind: 'point'} or {kind: 'box', previous}
  result: null, // {masks, scores, height, width, imageId}
  chosen: 0,
  note: '', // why the backend is not the obvious one
  times: {},
  pending: new Map(),
  nextId: 1,
};

// ---------- messages and progress

function showMessage(text, kind = 'error') {
  const el = $('message');
  el.textContent = text;
  el.className = kind === 'error' ? '' : 'info';
  el.hidden = !text;
  if (kind === 'error' && text) document.body.dataset.error = text;
}

function setState(name) {
  document.body.dataset.state = name;
}

function progress(label, loaded, total) {
  $('progress-box').hidden = label === null;
  if (label === null) return;
  $('progress-label').textContent = label;
  const bar = $('progress');
  if (total) {
    bar.max = total;
    bar.value = loaded;
  } else {
    bar.removeAttribute('value'); // indeterminate: a run of the encoder reports no steps
  }
}

function showTimes() {
  const t = state.times;
  const parts = [];
  if (t.load !== undefined) parts.push(`model load ${t.load.toFixed(0)} ms`);
  if (t.encode !== undefined) parts.push(`encode ${t.encode.toFixed(0)} ms (resize ${t.resize.toFixed(0)} ms)`);
  if (t.decode !== undefined) parts.push(`decode ${t.decode.toFixed(1)} ms`);
  $('times').textContent = parts.join(' · ');
}

window.addEventListener('error', (e) => showMessage(`Something went wrong: ${e.message}`));
window.addEventListener('unhandledrejection', (e) =>
  showMessage(`Something went wrong: ${e.reason && e.reason.message ? e.reason.message : e.reason}`),
);

// ---------- the worker

function call(role, msg, transfer = []) {
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject });
    state.workers[role].postMessage({ ...msg, id }, transfer);
  });
}

function startWorkers() {
  for (const w of Object.values(state.workers)) w.terminate();
  for (const p of state.pending.values()) p.reject(new Error('the model was reloaded'));
  state.pending.clear();
  for (const role of ['encoder', 'decoder']) state.workers[role] = startWorker();
}

function startWorker() {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === 'progress') {
      const mb = (n) => (n / 1048576).toFixed(1);
      progress(`${msg.stage}${msg.total > 1 ? ` (${mb(msg.loaded)} of ${mb(msg.total)} MB)` : ''}`, msg.loaded, msg.total);
      return;
    }
    const p = state.pending.get(msg.id);
    if (!p) return;
    state.pending.delete(msg.id);
    if (msg.type === 'error') p.reject(new Error(msg.message));
    else p.resolve(msg);
  };
  worker.onerror = (e) => {
    e.preventDefault();
    const text = `the model worker failed to start (${e.message || 'a script of the folder is missing or broken'})`;
    for (const p of state.pending.values()) p.reject(new Error(text));
    state.pending.clear();
  };
  return worker;
}

// ---------- model folder and backend

async function loadConfig() {
  let response;
  try {
    response = await fetch('model/model.json', { cache: 'no-store' });
  } catch (e) {
    throw new Error(`cannot fetch model/model.json (${e.message}): serve the folder with \`mobilesam web DIR\``);
  }
  if (!response.ok) {
    throw new Error(
      `model/model.json is missing (HTTP ${response.status}): this is not a folder written by ` +
        '`mobilesam export SRC --format web`; export it again',
    );
  }
  let config;
  try {
    config = await response.json();
  } catch (e) {
    throw new Error(`model/model.json is not valid JSON (${e.message}); export the folder again`);
  }
  const size = config.img_size;
  if (!Number.isInteger(size) || size < 64 || size % 64 !== 0 || !config.models || !Object.keys(config.models).length) {
    throw new Error(`model/model.json has no usable img_size or models (img_size ${size}); export the folder again`);
  }
  return config;
}

async function webgpuAdapter() {
  if (!navigator.gpu) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

async function chooseBackend() {
  const asked = params.get('backend');
  if (asked && asked !== 'webgpu' && asked !== 'wasm') {
    throw new Error(`?backend=${asked} is not a backend: use ?backend=webgpu or ?backend=wasm`);
  }
  const adapter = asked === 'wasm' ? null : await webgpuAdapter();
  if (asked === 'webgpu' && !adapter) {
    throw new Error('WebGPU is not available in this browser (no adapter): open the page without ?backend=webgpu');
  }
  // a software adapter (SwiftShader, a fallback adapter) is far slower than WASM: used only when asked for
  const info = (adapter && adapter.info) || {};
  const software = adapter && (adapter.isFallbackAdapter || info.isFallbackAdapter || info.architecture === 'swiftshader');
  if (software && asked !== 'webgpu') {
    state.note = ' (the only WebGPU adapter is a software one; ?backend=webgpu uses it)';
    return 'wasm';
  }
  return adapter ? 'webgpu' : 'wasm';
}

function threadCount() {
  const asked = Number.parseInt(params.get('threads') || '', 10);
  if (Number.isInteger(asked) && asked > 0) return crossOriginIsolated ? asked : 1;
  return crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
}

async function loadModel(precision) {
  setState('loading');
  state.ready = false;
  state.encoded = false;
  state.result = null;
  startWorkers();
  const entry = state.config.models[precision];
  const init = (role) =>
    call(role, {
      type: 'init',
      backend: state.backend,
      threads: state.threads,
      role,
      file: entry[role],
      size: state.config.img_size,
      baseUrl: new URL('model/', location.href).href,
    });
  const [r] = await Promise.all([init('encoder'), init('decoder')]);
  state.ready = true;
  state.times = { load: r.loadMs };
  const where = r.backend === 'webgpu' ? 'WebGPU' : `WASM, ${r.threads} thread${r.threads > 1 ? 's' : ''}`;
  const isolation = crossOriginIsolated ? '' : ' (single-threaded: the page is not cross-origin isolated)';
  const note = `${r.backend === 'wasm' ? isolation : ''}${state.note || ''}`;
  $('backend').textContent = `Running on ${where}${note}; model ${precision}, img_size ${state.config.img_size}.`;
  document.body.dataset.backend = r.backend;
  progress(null);
  showTimes();
  setState(state.width ? 'encoding' : 'ready');
  if (state.imageData) await encode();
}

// ---------- images

function fail(text) {
  showMessage(text);
  progress(null);
  setState(state.encoded ? 'encoded' : 'ready');
}

async function openFile(file) {
  showMessage('');
  setState('opening');
  if (file.type && !file.type.startsWith('image/')) {
    return fail(`${file.name} is not an image (${file.type}): open a PNG, JPEG, WebP, GIF or BMP file`);
  }
  if (file.size > MAX_BYTES) {
    return fail(`${file.name} is ${(file.size / 1048576).toFixed(0)} MB: this page takes files up to 64 MB`);
  }
  let bitmap;
  try {
    // the file's own pixels, as Pillow reads them: no colour management, no premultiplied alpha
    bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    return fail(`cannot read ${file.name}: the browser cannot decode it as an image; open a PNG, JPEG, WebP, GIF or BMP file`);
  }
  const { width, height } = bitmap;
  if (Math.max(width, height) > MAX_SIDE) {
    bitmap.close();
    return fail(`${file.name} is ${width}x${height} px: this page takes images up to ${MAX_SIDE} px on the long side; scale it down first`);
  }
  const canvas = $('image');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  state.imageData = ctx.getImageData(0, 0, width, height);
  Object.assign(state, { imageName: file.name, width, height, imageId: state.imageId + 1 });
  clearPrompts();
  canvas.hidden = false;
  $('overlay').hidden = false;
  $('drop-hint').hidden = true;
  const overlay = $('overlay');
  overlay.width = width;
  overlay.height = height;
  draw();
  if (state.ready) await encode();
}

async function encode() {
  setState('encoding');
  state.encoded = false;
  progress(`embedding ${state.imageName} on ${state.backend}...`, 0, 0);
  const rgba = state.imageData.data.slice().buffer;
  const imageId = state.imageId;
  try {
    const r = await call('encoder', { type: 'encode', rgba, width: state.width, height: state.height }, [rgba]);
    if (imageId !== state.imageId) return; // another image was opened meanwhile
    const { embedding, dims } = r;
    const size = { height: state.height, width: state.width };
    await call('decoder', { type: 'setEmbedding', data: embedding, dims, ...size }, [embedding.buffer]);
    if (imageId !== state.imageId) return;
    Object.assign(state.times, { encode: r.encodeMs, resize: r.resizeMs });
    delete state.times.decode;
    state.encoded = true;
    progress(null);
    showTimes();
    setState('encoded');
    if (state.points.length || state.box) requestDecode();
  } catch (e) {
    if (imageId === state.imageId) fail(e.message);
  }
}

async function openUrl(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    return fail(`cannot fetch ${url} (${e.message})`);
  }
  if (!response.ok) return fail(`${url} is missing (HTTP ${response.status}); export the folder again`);
  const blob = await response.blob();
  await openFile(new File([blob], url.split('/').pop(), { type: blob.type }));
}

// ---------- prompts and decoding

function clearPrompts() {
  Object.assign(state, { points: [], labels: [], box: null, history: [], result: null, chosen: 0 });
  updateButtons();
}

function updateButtons() {
  const any = state.history.length > 0;
  $('undo').disabled = !any;
  $('clear').disabled = !any;
  const mask = state.result !== null;
  $('download-png').disabled = !mask;
  $('download-json').disabled = !mask;
  const choices = $('choices');
  choices.textContent = '';
  if (state.result && state.result.masks.length > 1) {
    state.result.scores.forEach((s, i) => {
      const b = document.createElement('button');
      b.textContent = `mask ${i + 1} (IoU ${s.toFixed(2)})`;
      b.className = i === state.chosen ? 'chosen' : '';
      b.onclick = () => {
        state.chosen = i;
        updateButtons();
        draw();
      };
      choices.append(b);
    });
  }
}

let decoding = false;
let again = false;

async function requestDecode() {
  if (!state.encoded) return;
  if (decoding) {
    again = true;
    return;
  }
  decoding = true;
  try {
    do {
      again = false;
      await decodeOnce();
    } while (again);
  } finally {
    decoding = false;
  }
}

async function decodeOnce() {
  if (!state.points.length && !state.box) {
    state.result = null;
    updateButtons();
    draw();
    return;
  }
  setState('decoding');
  const imageId = state.imageId;
  const prompt = { points: state.points.map((p) => [...p]), labels: [...state.labels], box: state.box };
  try {
    const r = await call('decoder', { type: 'decode', ...prompt, multimask: $('multimask').checked });
    if (imageId !== state.imageId) return;
    let best = 0;
    r.scores.forEach((s, i) => {
      if (s > r.scores[best]) best = i;
    });
    state.result = { ...r, prompt };
    state.chosen = best;
    state.times.decode = r.ms;
    showTimes();
    showMessage('');
    setState('decoded');
  } catch (e) {
    fail(e.message);
  }
  updateButtons();
  draw();
}

function draw() {
  const overlay = $('overlay');
  const image = $('image');
  overlay.style.width = `${image.clientWidth}px`;
  overlay.style.height = `${image.clientHeight}px`;
  const ctx = overlay.getContext('2d');
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const r = state.result;
  if (r && r.width === state.width && r.height === state.height) {
    const mask = r.masks[state.chosen];
    const paint = ctx.createImageData(r.width, r.height);
    for (let i = 0; i < mask.length; i++) {
      if (mask[i]) paint.data.set(MASK_RGBA, i * 4);
    }
    ctx.putImageData(paint, 0, 0);
  }
  const unit = state.width / Math.max(1, image.clientWidth); // image pixels per screen pixel
  if (state.box) {
    const [x1, y1, x2, y2] = state.box;
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = '#00c864';
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, 5 * unit, 0, 2 * Math.PI);
    ctx.fillStyle = state.labels[i] ? '#00c864' : '#e03030';
    ctx.fill();
    ctx.lineWidth = 1.5 * unit;
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  });
}

function imagePoint(event) {
  const rect = $('overlay').getBoundingClientRect();
  const x = ((event.clientX - rect.left) * state.width) / rect.width;
  const y = ((event.clientY - rect.top) * state.height) / rect.height;
  return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
}

function mode() {
  return $('mode-box').checked ? 'box' : 'point';
}

let dragStart = null;

function onPointerDown(event) {
  if (!state.width || event.button === 1) return;
  if (mode() === 'box' && event.button === 0) {
    dragStart = imagePoint(event);
    return;
  }
  const negative = event.button === 2 || event.shiftKey || $('negative').checked;
  state.points.push(imagePoint(event));
  state.labels.push(negative ? 0 : 1);
  state.history.push({ kind: 'point' });
  updateButtons();
  draw();
  requestDecode();
}

function onPointerUp(event) {
  if (!dragStart) return;
  const [x0, y0] = dragStart;
  const [x1, y1] = imagePoint(event);
  dragStart = null;
  const unit = state.width / Math.max(1, $('image').clientWidth);
  if (Math.abs(x1 - x0) < 3 * unit || Math.abs(y1 - y0) < 3 * unit) return; // a click, not a box
  state.history.push({ kind: 'box', previous: state.box });
  state.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  updateButtons();
  draw();
  requestDecode();
}

function undo() {
  const last = state.history.pop();
  if (!last) return;
  if (last.kind === 'point') {
    state.points.pop();
    state.labels.pop();
  } else {
    state.box = last.previous;
  }
  updateButtons();
  draw();
  requestDecode();
}

// ---------- downloads

function chosenMask() {
  const r = state.result;
  return { mask: r.masks[state.chosen], score: r.scores[state.chosen], height: r.height, width: r.width };
}

function maskDocument() {
  if (!state.result) return null;
  const { mask, score, height, width } = chosenMask();
  const p = state.result.prompt;
  const prompts = { points: p.points, labels: p.labels, box: p.box, multimask: state.result.masks.length > 1 };
  return masksJson(mask, score, height, width, state.imageName, prompts);
}

function save(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

const stem = () => (state.imageName || 'image').replace(/\.[^.]*$/, '');

// ---------- wiring

function wire() {
  $('file').addEventListener('change', (e) => e.target.files[0] && openFile(e.target.files[0]));
  const stage = $('stage');
  for (const type of ['dragenter', 'dragover']) {
    document.addEventListener(type, (e) => {
      e.preventDefault();
      stage.classList.add('dragging');
    });
  }
  document.addEventListener('dragleave', () => stage.classList.remove('dragging'));
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    stage.classList.remove('dragging');
    const file = e.dataTransfer.files[0];
    if (file) openFile(file);
    else showMessage('nothing to open in what was dropped: drop an image file');
  });
  const overlay = $('overlay');
  overlay.addEventListener('pointerdown', onPointerDown);
  overlay.addEventListener('pointerup', onPointerUp);
  overlay.addEventListener('contextmenu', (e) => e.preventDefault());
  window.addEventListener('resize', draw);
  $('undo').onclick = undo;
  $('clear').onclick = () => {
    clearPrompts();
    draw();
  };
  $('multimask').onchange = () => requestDecode();
  $('download-png').onclick = async () => {
    const { mask, height, width } = chosenMask();
    save(await maskPng(mask, height, width), `${stem()}_mask.png`);
  };
  $('download-json').onclick = () => {
    const text = JSON.stringify(maskDocument());
    save(new Blob([text], { type: 'application/json' }), `${stem()}_mask.json`);
  };
  $('precision').onchange = (e) => loadModel(e.target.value).catch((err) => fail(err.message));
}

function listExamples() {
  const box = $('examples');
  for (const path of state.config.examples || []) {
    const b = document.createElement('button');
    b.textContent = path.split('/').pop().replace(/\.[^.]*$/, '');
    b.dataset.example = path;
    b.onclick = () => openUrl(path);
    box.append(b);
  }
}

function listPrecisions() {
  const names = Object.keys(state.config.models);
  const select = $('precision');
  for (const n of names) select.append(new Option(`${n} (${(state.config.models[n].bytes / 1048576).toFixed(1)} MB)`, n));
  select.value = state.config.default || names[0];
  $('precision-box').hidden = names.length < 2;
  return select.value;
}

// What tests and scripts read: the prompts the page used and the mask it shows
window.mobilesam = {
  state: () => ({
    state: document.body.dataset.state,
    backend: state.backend,
    threads: state.threads,
    width: state.width,
    height: state.height,
    points: state.points,
    labels: state.labels,
    box: state.box,
    times: state.times,
    error: $('message').hidden ? null : $('message').textContent,
  }),
  maskDocument,
  openUrl,
  // for benchmarks: embed the open image again; replace the prompts and decode (each resolves with the times)
  embed: async () => {
    await encode();
    return { ...state.times };
  },
  segment: async (points, labels, box = null) => {
    Object.assign(state, { points, labels, box, history: points.map(() => ({ kind: 'point' })) });
    await requestDecode();
    return { ...state.times };
  },
};

async function main() {
  $('max-side').textContent = MAX_SIDE;
  wire();
  try {
    state.config = await loadConfig();
    listExamples();
    const precision = listPrecisions();
    state.backend = await chooseBackend();
    state.threads = threadCount();
    await loadModel(precision);
  } catch (e) {
    $('backend').textContent = 'The model is not loaded.';
    progress(null);
    showMessage(e.message);
    setState('error');
  }
}

main();
