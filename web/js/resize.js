// Resizing exactly as the project does: the long side to img_size with SAM's rounding rule
// (mobilesam/transforms.py preprocess_shape) and Pillow's BILINEAR resample, bit for bit (Pillow's Resample.c:
// a triangle filter widened by the scale when reducing, 22-bit fixed-point weights, horizontal pass first).

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

/** (h, w) after scaling so the long side is `longSide`, rounded half up, at least 1 (preprocess_shape). */
export function preprocessShape(h, w, longSide) {
  const scale = (longSide * 1.0) / Math.max(h, w);
  return [Math.max(1, Math.floor(h * scale + 0.5)), Math.max(1, Math.floor(w * scale + 0.5))];
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: {bounds: [xmin, n]*, kk: Int32 weights, ksize}. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale; // the bilinear (triangle) filter's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5); // C's (int) truncates toward zero
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      let t = Math.abs((x + xmin - center + 0.5) * ss);
      t = t < 1.0 ? 1.0 - t : 0.0;
      w[x] = t;
      ww += t;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

function clip8(v) {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

/**
 * Pillow's `image.resize((outW, outH), Image.BILINEAR)` of an RGB image.
 * @param {Uint8Array|Uint8ClampedArray} src HxWxC pixels (C = 3 or 4; only the first 3 channels are used)
 * @returns {Uint8Array} outH x outW x 3
 */
export function resizeBilinear(src, width, height, channels, outW, outH) {
  if (height > width * 100 && outH < height && outW !== width) {
    // Pillow's Image.resize reduces a very tall image's height first, as a resize of its own
    const tall = resizeBilinear(src, width, height, channels, width, outH);
    return resizeBilinear(tall, width, outH, 3, outW, outH);
  }
  // to packed RGB first
  let cur = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height; i++, j += channels) {
    cur[i * 3] = src[j];
    cur[i * 3 + 1] = src[j + 1];
    cur[i * 3 + 2] = src[j + 2];
  }
  let curW = width;
  let curH = height;
  const vert = outH !== height ? coefficients(height, outH) : null;
  if (outW !== width) {
    const { bounds, kk, ksize } = coefficients(width, outW);
    // only the source rows the vertical pass reads (Pillow's ybox_first .. ybox_last)
    let first = 0;
    let last = height;
    if (vert) {
      first = vert.bounds[0];
      last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
      for (let i = 0; i < outH; i++) vert.bounds[i * 2] -= first;
    }
    const rows = last - first;
    const out = new Uint8Array(outW * rows * 3);
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + first) * curW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const n = bounds[xx * 2 + 1];
        const k = xx * ksize;
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        for (let x = 0; x < n; x++) {
          const p = rowIn + (x + xmin) * 3;
          const c = kk[k + x];
          s0 += cur[p] * c;
          s1 += cur[p + 1] * c;
          s2 += cur[p + 2] * c;
        }
        const o = (y * outW + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    cur = out;
    curW = outW;
    curH = rows;
  }
  if (vert) {
    const { bounds, kk, ksize } = vert;
    const out = new Uint8Array(curW * outH * 3);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = bounds[yy * 2];
      const n = bounds[yy * 2 + 1];
      const k = yy * ksize;
      for (let xx = 0; xx < curW; xx++) {
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        for (let y = 0; y < n; y++) {
          const p = ((y + ymin) * curW + xx) * 3;
          const c = kk[k + y];
          s0 += cur[p] * c;
          s1 += cur[p + 1] * c;
          s2 += cur[p + 2] * c;
        }
        const o = (yy * curW + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    cur = out;
    curH = outH;
  }
  return cur;
}

/** The encoder's input: RGBA or RGB pixels -> {data: h x w x 3 uint8, h, w} with the long side = imgSize. */
export function resizeLongSide(src, width, height, channels, imgSize) {
  const [h, w] = preprocessShape(height, width, imgSize);
  return { data: resizeBilinear(src, width, height, channels, w, h), h, w };
}
