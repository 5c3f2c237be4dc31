// The annotation document's mask encoding (docs/annotation-schema.json): runs over the
// row-major frame as [value, length, value, length, ...]. The server decodes the same.

export function rleEncode(mask) {
  const counts = [];
  const n = mask.length;
  if (n === 0) return counts;
  let value = mask[0];
  let start = 0;
  for (let i = 1; i < n; i++) {
    if (mask[i] !== value) {
      counts.push(value, i - start);
      value = mask[i];
      start = i;
    }
  }
  counts.push(value, n - start);
  return counts;
}

export function rleDecode(counts, size) {
  const out = new Uint8Array(size);
  let at = 0;
  for (let i = 0; i < counts.length; i += 2) {
    const value = counts[i];
    const length = counts[i + 1];
    if (value) out.fill(value, at, at + length);
    at += length;
  }
  if (at !== size) throw new Error(`a mask covers ${at} pixels, the frame has ${size}`);
  return out;
}

// Fill a polygon (image pixel coordinates, [x, y] pairs) with `value`: even-odd rule,
// pixel centres, one scanline at a time.
export function fillPolygon(mask, columns, rows, points, value) {
  if (points.length < 3) return 0;
  let filled = 0;
  const ys = points.map((p) => p[1]);
  const top = Math.max(0, Math.floor(Math.min(...ys)));
  const bottom = Math.min(rows - 1, Math.ceil(Math.max(...ys)));
  for (let y = top; y <= bottom; y++) {
    const cy = y + 0.5;
    const xs = [];
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [x1, y1] = points[i];
      const [x2, y2] = points[j];
      if ((y1 <= cy && y2 > cy) || (y2 <= cy && y1 > cy)) {
        xs.push(x1 + ((cy - y1) / (y2 - y1)) * (x2 - x1));
      }
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      const from = Math.max(0, Math.ceil(xs[k] - 0.5));
      const to = Math.min(columns - 1, Math.floor(xs[k + 1] - 0.5));
      if (to >= from) {
        mask.fill(value, y * columns + from, y * columns + to + 1);
        filled += to - from + 1;
      }
    }
  }
  return filled;
}
