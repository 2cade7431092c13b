// The page's downloads: a mask as COCO RLE (pycocotools' compressed string form) inside the same JSON document
// the Gradio demo writes (mobilesam/demo/files.py masks_json), and as an 8-bit PNG.

/** HxW 0/1 mask (row-major) -> run lengths in COCO's column-major order, starting with a run of zeros. */
export function runLengths(mask, height, width) {
  const counts = [];
  let prev = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = mask[y * width + x];
      if (v !== prev) {
        counts.push(run);
        run = 0;
        prev = v;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** Run lengths -> pycocotools' `rleToString` (deltas against the run two back, 5 bits a character). */
export function countsToString(counts) {
  let s = '';
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

/** The tight XYWH box of a mask, as COCO writes `bbox` ([0, 0, 0, 0] when empty). */
export function bboxXYWH(mask, height, width) {
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      if (mask[row + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
  }
  return x1 < 0 ? [0, 0, 0, 0] : [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
}

/** One mask -> the COCO-style document: image, one annotation (compressed RLE), the prompts that made it. */
export function masksJson(mask, score, height, width, imageName, prompts) {
  let area = 0;
  for (let i = 0; i < mask.length; i++) area += mask[i];
  return {
    image: { id: 1, file_name: imageName, height, width },
    annotations: [
      {
        id: 1,
        image_id: 1,
        category_id: 1,
        segmentation: { size: [height, width], counts: countsToString(runLengths(mask, height, width)) },
        area,
        bbox: bboxXYWH(mask, height, width),
        iscrowd: 0,
        predicted_iou: Math.round(score * 1e6) / 1e6,
      },
    ],
    prompts,
  };
}

/** One mask -> a PNG blob, 255 inside and 0 outside (grey levels in an opaque RGBA PNG). */
export async function maskPng(mask, height, width) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(width, height);
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    image.data[i * 4] = v;
    image.data[i * 4 + 1] = v;
    image.data[i * 4 + 2] = v;
    image.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return canvas.convertToBlob({ type: 'image/png' });
}
