// The page's Web Workers: one runs the encoder, one the decoder (each its own onnxruntime-web instance, so both load
// at once and a click is decoded while the next image embeds), so the page never freezes. Inputs and
// outputs are those of mobilesam's OnnxPredictor (mobilesam/deploy/onnx_runtime.py): the encoder takes the image
// resized with Pillow's bilinear rule (resize.js), the decoder SAM's ONNX interface.
import * as ort from '../ort/ort.min.mjs';
import { preprocessShape, resizeLongSide } from './resize.js';

let session = null; // this worker's graph: the encoder or the decoder
let imgSize = 0;
let embedding = null; // the decoder's: {tensor, height, width}

const post = (msg, transfer = []) => self.postMessage(msg, transfer);

async function sha256(buffer) {
  if (!self.crypto || !self.crypto.subtle) return null; // not a secure context (plain http on another host)
  const digest = await self.crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Fetches one model file with byte progress, and checks its size and sha256 against model.json. */
async function fetchModel(file, role, baseUrl) {
  const url = new URL(file.path, baseUrl).href;
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`cannot fetch ${file.path} (${e.message}); serve the folder with \`mobilesam web DIR\``);
  }
  if (!response.ok) {
    throw new Error(
      `${file.path} is missing from the model folder (HTTP ${response.status}); ` +
        'export the folder again with `mobilesam export SRC --format web`',
    );
  }
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    post({ type: 'progress', stage: `downloading ${file.path}`, role, loaded, total: file.bytes });
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  if (loaded !== file.bytes) {
    throw new Error(
      `${file.path} has ${loaded} bytes but model.json records ${file.bytes}: ` +
        'the folder mixes files of two exports; export it again',
    );
  }
  const digest = await sha256(bytes.buffer);
  if (digest !== null && digest !== file.sha256) {
    throw new Error(
      `${file.path} does not match model.json (sha256 ${digest.slice(0, 12)}..., recorded ` +
        `${file.sha256.slice(0, 12)}...): it comes from another export; export the folder again`,
    );
  }
  return bytes;
}

/** The graph is this role's, exported for model.json's img_size (its static sizes), else an error saying so. */
function checkGraph(role, path) {
  const inputs = session.inputNames.join(', ');
  const meta = (list, name) => (session[list] || []).find((m) => m.name === name);
  const expected = role === 'encoder' ? ['image'] : ['image_embeddings', 'point_coords', 'point_labels', 'mask_input'];
  if (!expected.every((n) => session.inputNames.includes(n))) {
    throw new Error(
      `${path} is not a MobileSAM ${role} (its inputs are ${inputs}; a ${role} takes ${expected.join(', ')}): ` +
        'export the folder again',
    );
  }
  // the encoder's embedding is 1x256x(S/16)x(S/16) and the decoder's mask_input 1x1x(S/4)x(S/4), both static
  const [name, list, side] =
    role === 'encoder' ? ['image_embeddings', 'outputMetadata', imgSize / 16] : ['mask_input', 'inputMetadata', imgSize / 4];
  const shape = meta(list, name) && meta(list, name).shape;
  const last = shape && shape.length ? shape[shape.length - 1] : null;
  if (typeof last === 'number' && last !== side) {
    const theirs = role === 'encoder' ? last * 16 : last * 4;
    throw new Error(
      `${path} was exported for img_size ${theirs}, but model.json says ${imgSize}: the folder mixes two exports; ` +
        'export it again',
    );
  }
}

async function init({ id, backend, threads, file, role, size, baseUrl }) {
  ort.env.wasm.wasmPaths = new URL('../ort/', import.meta.url).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
  const t0 = performance.now();
  const bytes = await fetchModel(file, role, baseUrl);
  post({ type: 'progress', stage: `starting the ${role} on ${backend}`, role, loaded: 1, total: 1 });
  session = await ort.InferenceSession.create(bytes, { executionProviders: [backend], graphOptimizationLevel: 'all' });
  imgSize = size;
  checkGraph(role, file.path);
  embedding = null;
  post({ type: 'ready', id, backend, threads: ort.env.wasm.numThreads, loadMs: performance.now() - t0 });
}

async function encode({ id, rgba, width, height }) {
  const t0 = performance.now();
  const resized = resizeLongSide(new Uint8Array(rgba), width, height, 4, imgSize);
  const t1 = performance.now();
  const image = new ort.Tensor('uint8', resized.data, [resized.h, resized.w, 3]);
  const out = await session.run({ image });
  const tensor = out.image_embeddings;
  const g = imgSize / 16;
  const dims = tensor.dims;
  if (dims.length !== 4 || dims[2] !== g || dims[3] !== g) {
    throw new Error(
      `the encoder gives a ${dims.join('x')} embedding, but model.json says img_size ${imgSize} ` +
        `(1x256x${g}x${g}): the folder mixes two exports; export it again`,
    );
  }
  const data = new Float32Array(tensor.location === 'cpu' || !tensor.location ? tensor.data : await tensor.getData());
  const t2 = performance.now();
  post({ type: 'encoded', id, resizeMs: t1 - t0, encodeMs: t2 - t1, embedding: data, dims }, [data.buffer]);
}

/** The decoder's side: the embedding of the image the next prompts are on. */
async function setEmbedding({ id, data, dims, height, width }) {
  const g = imgSize / 16;
  if (dims[2] !== g) throw new Error(`a ${dims.join('x')} embedding does not fit this img_size ${imgSize} decoder`);
  embedding = { tensor: new ort.Tensor('float32', data, dims), height, width };
  post({ type: 'embedding set', id });
}

/** Points (original pixels) and a box -> the decoder's 1xNx2 coordinates and 1xN labels (object_prompts). */
function prompts(points, labels, box, height, width) {
  const [h, w] = preprocessShape(height, width, imgSize);
  const coords = [];
  const labs = [];
  for (let i = 0; i < points.length; i++) {
    coords.push(points[i][0] * (w / width), points[i][1] * (h / height));
    labs.push(labels[i]);
  }
  if (box) {
    coords.push(box[0] * (w / width), box[1] * (h / height), box[2] * (w / width), box[3] * (h / height));
    labs.push(2, 3);
  } else {
    coords.push(0, 0); // SAM's padding point
    labs.push(-1);
  }
  return [new Float32Array(coords), new Float32Array(labs)];
}

async function decode({ id, points, labels, box, multimask }) {
  if (!embedding) throw new Error('no image is embedded yet: open an image first');
  const { height, width } = embedding;
  const t0 = performance.now();
  const [coords, labs] = prompts(points, labels, box, height, width);
  const n = labs.length;
  const g = 4 * embedding.tensor.dims[3];
  const feeds = {
    image_embeddings: embedding.tensor,
    point_coords: new ort.Tensor('float32', coords, [1, n, 2]),
    point_labels: new ort.Tensor('float32', labs, [1, n]),
    mask_input: new ort.Tensor('float32', new Float32Array(g * g), [1, 1, g, g]),
    has_mask_input: new ort.Tensor('float32', new Float32Array(1), [1]),
    orig_im_size: new ort.Tensor('float32', new Float32Array([height, width]), [2]),
  };
  const out = await session.run(feeds);
  const logits = out.masks.data;
  const iou = out.iou_predictions.data;
  const numMasks = out.masks.dims[1];
  // mask 0 is the single-mask output, 1-3 the multimask outputs (OnnxPredictor.decode)
  const picks = numMasks === 1 || !multimask ? [0] : [1, 2, 3];
  const plane = height * width;
  const masks = [];
  for (const m of picks) {
    const mask = new Uint8Array(plane);
    const base = m * plane;
    for (let i = 0; i < plane; i++) mask[i] = logits[base + i] > 0 ? 1 : 0;
    masks.push(mask);
  }
  const scores = picks.map((m) => iou[m]);
  const ms = performance.now() - t0;
  post({ type: 'decoded', id, masks, scores, height, width, ms }, masks.map((m) => m.buffer));
}

const handlers = { init, encode, setEmbedding, decode };

// one message at a time: a session runs one inference at a time, and a decode must follow its image's encode
let queue = Promise.resolve();
self.onmessage = (event) => {
  const msg = event.data;
  queue = queue.then(async () => {
    try {
      await handlers[msg.type](msg);
    } catch (e) {
      post({ type: 'error', id: msg.id, during: msg.type, message: e && e.message ? e.message : String(e) });
    }
  });
};
