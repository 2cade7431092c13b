"""Areas, tight boxes and masks of SAM's upsampled, thresholded mask logits, without upsampling every pixel.

`Sam.postprocess_masks` upsamples low-resolution logits twice (bilinearly, 4x to the model input, then to the
original size). Both steps are convex combinations, and every output pixel depends on at most 3 x 3
low-resolution logits, those starting at the cell (lo_y(Y), lo_x(X)). Where all nine lie on one side of a
threshold, so does the output, so it is known without interpolating: areas and boxes of those pixels are sums
and extremes over low-resolution cells. The output pixels of the other cells (near the mask border) are
computed per cell as `Wr @ P @ Wc^T`, with P the cell's 3x3 logits and Wr, Wc the two steps' weights composed
per axis. That is the same number up to float rounding (a threshold decision can flip only for a pixel within
~1e-6 of the threshold; the tests count them). Noise-like logits (random weights) are border everywhere; those
masks take the dense path, `Sam.postprocess_masks` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..mask_ops import _bilinear_taps, _expand
from ..modeling import Sam

# Above this fraction of output pixels in border cells, a mask takes the dense path. A border pixel costs a few
# times a dense one; object-shaped masks have a few percent, noise nearly all (a chosen value, not a tuned one).
DENSE_FRACTION = 0.3
# Masks per dense chunk (float logits of H x W each)
DENSE_CHUNK = 8


class _Axis:
    """One axis of the two upsampling steps: low -> low * factor (cropped to `keep`) -> `out`."""

    def __init__(self, low: int, factor: int, keep: int, out: int, device: torch.device) -> None:
        a0, a1, la = (t[:keep] for t in _bilinear_taps(low, low * factor, device))
        y0, y1, ly = _bilinear_taps(keep, out, device)
        self.lo = a0[y0]  # first low-resolution row of each output row's support (the support is lo..lo+2)
        self.size = min(low, int(self.lo.max()) + 3)  # low-resolution rows that reach the output
        self.count = torch.bincount(self.lo, minlength=self.size)  # output rows per low-resolution row
        self.start = torch.cumsum(self.count, 0) - self.count
        # Each output row as weights over low rows lo, lo+1, lo+2 (both steps composed): out x 3
        composed = torch.zeros(out, 3, device=device)
        for idx, weight in (
            (a0[y0], (1 - la[y0]) * (1 - ly)),
            (a1[y0], la[y0] * (1 - ly)),
            (a0[y1], (1 - la[y1]) * ly),
            (a1[y1], la[y1] * ly),
        ):
            composed.scatter_add_(1, (idx - self.lo)[:, None], weight[:, None])
        # Per low row (cell): the composed weights of its output rows, padded to `span` rows with zeros
        self.span = int(self.count.max())
        k = torch.arange(self.span, device=device)
        self.valid = k[None, :] < self.count[:, None]  # size x span
        rows = (self.start[:, None] + k[None, :]).clamp(max=out - 1)
        self.weights = composed[rows] * self.valid[..., None]  # size x span x 3
        self.window = (torch.arange(self.size, device=device)[:, None] + torch.arange(3, device=device)).clamp(
            max=self.size - 1
        )  # size x 3: the low rows of each cell's window (clamped at the edge, as the kernels clamp)


def _window3(x: Tensor, op) -> Tensor:
    """`op` (torch.minimum or torch.maximum) over each cell's window x[:, i..i+2, j..j+2], clamped at the edge."""
    out = x.clone()
    for dim in (1, 2):
        n = out.shape[dim]
        src = out.clone() if n > 1 else out
        for shift in (1, 2):
            if n > shift:
                head = out.narrow(dim, 0, n - shift)
                op(head, src.narrow(dim, shift, n - shift), out=head)
    return out


class LogitUpsampler:
    """Thresholded statistics of `Sam.postprocess_masks(logits, input_size, original_size)` for many masks.

    All logits are Nx(L)x(L) low-resolution masks (L = img_size / 4), as the mask decoder returns them.

    Args:
        model: the model whose `postprocess_masks` this reproduces (and calls for dense masks).
        input_size: (h, w) of the resized image inside the model input.
        original_size: (H, W) of the output.
    """

    def __init__(self, model: Sam, input_size: tuple[int, ...], original_size: tuple[int, ...]) -> None:
        self.model = model
        self.input_size, self.original_size = tuple(input_size), tuple(original_size)
        low = model.prompt_encoder.mask_input_size[0]
        factor, dev = model.img_size // low, model.device
        self.rows = _Axis(low, factor, self.input_size[0], self.original_size[0], dev)
        self.cols = _Axis(low, factor, self.input_size[1], self.original_size[1], dev)
        self.cell_pixels = self.rows.count[:, None] * self.cols.count[None, :]  # output pixels per cell
        self.has_pixels = self.cell_pixels > 0
        # float64 sums of pixel counts are exact (float32 would not be above 2^24 pixels)
        self.pixel_weights = self.cell_pixels.flatten().double()

    def _split(self, logits: Tensor, levels: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """Cell levels, border cells and the masks to do densely, for Nx(L)x(L) logits and thresholds `levels`.

        Returns:
            Nxhxw int32 number of `sorted(set(levels))` below each cell's window minimum (for a cell that is not a
            border cell, the index of the band every output pixel of the cell lies in); Nxhxw bool border cells
            (windows straddling a level); N bool masks with so much border that the dense path is cheaper.
        """
        x = logits[:, : self.rows.size, : self.cols.size]
        bounds = torch.tensor(sorted(set(levels)), dtype=x.dtype, device=x.device)
        low = torch.bucketize(_window3(x, torch.minimum), bounds, out_int32=True)
        high = torch.bucketize(_window3(x, torch.maximum), bounds, out_int32=True)
        border = (low != high) & self.has_pixels
        in_border = border.flatten(1).to(self.pixel_weights.dtype) @ self.pixel_weights
        dense = in_border > DENSE_FRACTION * self.original_size[0] * self.original_size[1]
        return low, border, dense

    def _border_blocks(self, logits: Tensor, border: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Output logits of the border cells: (mask index, cell row, cell column, blocks B x span_y x span_x)."""
        r, c = self.rows, self.cols
        plane, ci, cj = border.nonzero(as_tuple=True)
        patch = logits[plane[:, None, None], r.window[ci][:, :, None], c.window[cj][:, None, :]]  # B x 3 x 3
        blocks = r.weights[ci] @ (patch @ c.weights[cj].transpose(1, 2))
        return plane, ci, cj, blocks

    def _block_valid(self, ci: Tensor, cj: Tensor) -> Tensor:
        return self.rows.valid[ci][:, :, None] & self.cols.valid[cj][:, None, :]

    def stats(self, logits: Tensor, thresholds: tuple[float, ...], box_threshold: float) -> tuple[Tensor, Tensor]:
        """Areas above each threshold and the tight box above `box_threshold`, at the original size.

        Args:
            logits: Nx(L)x(L) low-resolution logits.
            thresholds: T thresholds.
            box_threshold: the mask threshold.

        Returns:
            NxT int64 pixel counts `(upsampled > t).sum()`, and Nx4 float XYXY boxes of `upsampled > box_threshold`
            (x2, y2 inclusive; zeros when empty).
        """
        n = len(logits)
        levels = sorted({*thresholds, box_threshold})
        band, border, dense = self._split(logits, tuple(levels))
        counts = torch.zeros(n, len(thresholds), dtype=torch.int64, device=logits.device)
        boxes = torch.zeros(n, 4, device=logits.device)

        sparse = (~dense).nonzero().flatten()
        if len(sparse):
            bd = border[sparse]
            # Decided cells: output pixels per band (bucket 0 holds the border cells), one pass
            code = torch.where(bd, 0, band[sparse] + 1).flatten(1).long()
            hist = torch.zeros(len(sparse), len(levels) + 2, dtype=torch.float64, device=logits.device)
            hist.scatter_add_(1, code, self.pixel_weights.expand_as(code))
            above = hist.flip(1).cumsum(1).flip(1)  # above[:, b]: pixels in bands >= b
            plane, ci, cj, blocks = self._border_blocks(logits[sparse], bd)
            valid = self._block_valid(ci, cj)
            for k, t in enumerate(thresholds):
                # pixels above level j are in bands >= j + 1, i.e. codes >= j + 2
                decided = above[:, levels.index(t) + 2].round().long()
                exact = ((blocks > t) & valid).flatten(1).sum(1)
                per_mask = torch.zeros(len(sparse), dtype=torch.int64, device=logits.device).index_add_(0, plane, exact)
                counts[sparse, k] = decided + per_mask
            hit = (blocks > box_threshold) & valid
            cells = (band[sparse] > levels.index(box_threshold)) & ~bd
            boxes[sparse] = self._boxes(cells, plane, ci, cj, hit)
        for chunk in dense.nonzero().flatten().split(DENSE_CHUNK):
            full = self._dense(logits[chunk]).flatten(1)
            for k, t in enumerate(thresholds):
                counts[chunk, k] = _count_above(full, t)
            boxes[chunk] = _dense_boxes(full.view(len(chunk), *self.original_size), box_threshold)
        return counts, boxes

    def _boxes(self, cells: Tensor, plane: Tensor, ci: Tensor, cj: Tensor, hit: Tensor) -> Tensor:
        """Tight boxes from the decided cells above the threshold and the border-cell pixels above it."""
        r, c = self.rows, self.cols
        n = len(cells)
        cells = cells & self.has_pixels
        big = max(self.original_size) + 1
        any_row, any_col = cells.any(2), cells.any(1)  # N x h, N x w
        y1 = torch.where(any_row, r.start, big).amin(1)
        y2 = torch.where(any_row, r.start + r.count - 1, -1).amax(1)
        x1 = torch.where(any_col, c.start, big).amin(1)
        x2 = torch.where(any_col, c.start + c.count - 1, -1).amax(1)
        # Border cells: the first and last hit row / column of each block, in output pixels
        ky = torch.arange(r.span, device=cells.device)
        kx = torch.arange(c.span, device=cells.device)
        hit_row, hit_col = hit.any(2), hit.any(1)
        y1 = y1.scatter_reduce(0, plane, torch.where(hit_row, r.start[ci][:, None] + ky, big).amin(1), "amin")
        y2 = y2.scatter_reduce(0, plane, torch.where(hit_row, r.start[ci][:, None] + ky, -1).amax(1), "amax")
        x1 = x1.scatter_reduce(0, plane, torch.where(hit_col, c.start[cj][:, None] + kx, big).amin(1), "amin")
        x2 = x2.scatter_reduce(0, plane, torch.where(hit_col, c.start[cj][:, None] + kx, -1).amax(1), "amax")
        boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
        return torch.where((y2 < 0)[:, None], torch.zeros_like(boxes), boxes).view(n, 4)

    def masks(self, logits: Tensor, threshold: float) -> Tensor:
        """`postprocess_masks(logits, ...) > threshold`: Nx(L)x(L) logits -> NxHxW bool masks."""
        band, border, dense = self._split(logits, (threshold,))
        out = torch.empty(len(logits), *self.original_size, dtype=torch.bool, device=logits.device)
        sparse = (~dense).nonzero().flatten()
        if len(sparse):
            r, c = self.rows, self.cols
            bd = border[sparse]
            decided = ((band[sparse] > 0) & ~bd).to(torch.uint8)[:, None]
            full = _expand(decided, r.lo, c.lo)[:, 0]
            plane, ci, cj, blocks = self._border_blocks(logits[sparse], bd)
            b, yy, xx = self._block_valid(ci, cj).nonzero(as_tuple=True)
            value = blocks[b, yy, xx] > threshold
            full[plane[b], r.start[ci][b] + yy, c.start[cj][b] + xx] = value.to(torch.uint8)
            out[sparse] = full.view(torch.bool)
        for chunk in dense.nonzero().flatten().split(DENSE_CHUNK):
            # Thresholding the float logits (`upsample_binary`'s own border test would find border everywhere)
            out[chunk] = self._dense(logits[chunk]) > threshold
        return out

    def _dense(self, logits: Tensor) -> Tensor:
        """`Sam.postprocess_masks` of Nx(L)x(L) logits: NxHxW float logits at the original size."""
        return self.model.postprocess_masks(logits[:, None], self.input_size, self.original_size)[:, 0]


def _count_above(x: Tensor, t: float) -> Tensor:
    """`(x > t).sum(1)` for NxK floats (summing the bool as bytes: a bool sum converts to int64 first, 6x slower)."""
    return (x > t).view(torch.uint8).sum(1, dtype=torch.int32).long()


def _dense_boxes(x: Tensor, t: float) -> Tensor:
    """Tight XYXY boxes of `x > t` for NxHxW floats, from row and column maxima (a float max is ~8x faster than
    `any` over a bool mask); zeros when empty, as `masks_to_boxes`."""
    rows = x.amax(dim=2) > t  # N x H
    cols = x.amax(dim=1) > t  # N x W
    ys = torch.arange(x.shape[1], device=x.device)
    xs = torch.arange(x.shape[2], device=x.device)
    y1 = torch.where(rows, ys, x.shape[1]).amin(1)
    y2 = torch.where(rows, ys, -1).amax(1)
    x1 = torch.where(cols, xs, x.shape[2]).amin(1)
    x2 = torch.where(cols, xs, -1).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where((y2 < 0)[:, None], torch.zeros_like(boxes), boxes)
