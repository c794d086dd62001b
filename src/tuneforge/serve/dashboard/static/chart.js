// tuneforge dashboard: a small line chart on <canvas> (no library). Series of [x, y] points; redraws at most
// once per animation frame, so a stream of points never freezes the page.
"use strict";
const TF_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"];

class TFChart {
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.title = opts.title || "";
    this.xlabel = opts.xlabel || "step";
    this.series = new Map(); // name -> {color, points, dashed}
    this.marks = [];         // vertical lines: {x, label, color}
    this.pending = false;
    new ResizeObserver(() => this.draw()).observe(canvas);
  }
  add(name, x, y, style = {}) {
    if (typeof y !== "number" || !isFinite(y)) return;
    if (!this.series.has(name)) {
      this.series.set(name, { color: style.color || TF_COLORS[this.series.size % TF_COLORS.length], points: [], dashed: !!style.dashed, dots: !!style.dots });
    }
    this.series.get(name).points.push([x, y]);
    this.schedule();
  }
  clear() { this.series.clear(); this.marks = []; this.schedule(); }
  mark(x, label, color = "#c44e52") { this.marks = this.marks.filter(m => m.label !== label); this.marks.push({ x, label, color }); this.schedule(); }
  count() { let n = 0; for (const s of this.series.values()) n += s.points.length; return n; }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }
  static ticks(lo, hi, n) {
    if (hi === lo) { hi = lo + 1; lo = lo - 1; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  static fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return +v.toPrecision(4) + "";
  }
  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = "#1d2330";
    g.fillText(this.title, 10, 16);
    const all = [...this.series.values()].flatMap(s => s.points);
    if (!all.length) {
      g.fillStyle = "#98a2b3"; g.fillText("waiting for the first logged step ...", 10, h / 2); return;
    }
    let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
    let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
    for (const m of this.marks) { x0 = Math.min(x0, m.x); x1 = Math.max(x1, m.x); }
    if (x1 === x0) { x1 = x0 + 1; }
    const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad;
    const L = 56, R = 12, T = 26, B = 44;
    const X = x => L + (x - x0) / (x1 - x0) * (w - L - R);
    const Y = y => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
    g.strokeStyle = "#eceff3"; g.fillStyle = "#667085"; g.lineWidth = 1;
    for (const v of TFChart.ticks(y0, y1, 5)) {
      g.beginPath(); g.moveTo(L, Y(v)); g.lineTo(w - R, Y(v)); g.stroke();
      g.fillText(TFChart.fmt(v), 4, Y(v) + 4);
    }
    for (const v of TFChart.ticks(x0, x1, 6)) {
      if (Math.abs(v - Math.round(v)) > 1e-9 && x1 - x0 > 6) continue;
      g.beginPath(); g.moveTo(X(v), T); g.lineTo(X(v), h - B); g.stroke();
      g.fillText(TFChart.fmt(v), X(v) - 8, h - B + 15);
    }
    g.fillText(this.xlabel, (L + w - R) / 2 - 20, h - B + 30);
    for (const m of this.marks) {
      g.strokeStyle = m.color; g.setLineDash([5, 4]);
      g.beginPath(); g.moveTo(X(m.x), T); g.lineTo(X(m.x), h - B); g.stroke(); g.setLineDash([]);
    }
    let lx = L + 4;
    const legendY = h - 8;
    for (const [name, s] of this.series) {
      const pts = [...s.points].sort((a, b) => a[0] - b[0]);
      g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = 1.7;
      g.setLineDash(s.dashed ? [6, 4] : []);
      g.beginPath();
      pts.forEach((p, i) => i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1])));
      g.stroke(); g.setLineDash([]);
      if (s.dots || pts.length < 40) for (const p of pts) { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 2.6, 0, 6.3); g.fill(); }
      g.fillRect(lx, legendY - 8, 14, 3);
      g.fillStyle = "#344054"; g.fillText(name, lx + 18, legendY - 3);
      lx += 26 + g.measureText(name).width;
    }
    for (const m of this.marks) { g.fillStyle = m.color; g.fillText(m.label, lx, legendY - 3); lx += 20 + g.measureText(m.label).width; }
    this.canvas.dataset.points = String(this.count());
  }
}
window.TFChart = TFChart;
