// lemo-nade ui: small inline-SVG plots, drawn with DOM calls only (labels are text
// nodes, never markup), so no plotting library and no request leaves this server.
"use strict";

window.LemoPlots = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 420, H = 260, M = { l: 52, r: 12, t: 22, b: 36 };

  function svgEl(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  // A clickable point with a tooltip. The svg keeps the points' ids and texts; one
  // click and one hover listener per plot serve them all, and a point's <title> is made
  // the first time the pointer is over it: a 1,000-iteration run draws 3,000 points
  // without 3,000 closures and title elements.
  function dot(svg, attrs, id, text) {
    const items = svg.lemoItems || (svg.lemoItems = []);
    items.push({ id, text });
    return svg.appendChild(svgEl("circle", { ...attrs, "data-i": items.length - 1 }));
  }

  function interactive(svg, onClick) {
    const item = (ev) => {
      const i = ev.target.getAttribute && ev.target.getAttribute("data-i");
      return i === null || i === undefined ? null : svg.lemoItems[Number(i)];
    };
    svg.addEventListener("mouseover", (ev) => {
      const it = item(ev);
      if (it && !ev.target.firstChild) ev.target.appendChild(svgEl("title", {}, it.text));
    });
    if (onClick) {
      svg.addEventListener("click", (ev) => {
        const it = item(ev);
        if (it) onClick(it.id);
      });
    }
    return svg;
  }

  function frame(title) {
    const svg = svgEl("svg", { class: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    svg.appendChild(svgEl("text", { x: W / 2, y: 14, "text-anchor": "middle" }, title));
    return svg;
  }

  function extent(values, pad) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (!isFinite(lo) || !isFinite(hi)) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= pad || 0.5; hi += pad || 0.5; }
    return [lo, hi];
  }

  function scale(lo, hi, a, b, log) {
    const f = log ? Math.log10 : (v) => v;
    const l = f(lo), h = f(hi);
    return (v) => a + ((f(v) - l) / (h - l)) * (b - a);
  }

  function ticks(lo, hi, log) {
    if (log) {
      const out = [];
      for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
        const v = Math.pow(10, p);
        if (v >= lo && v <= hi) out.push(v);
      }
      return out.length ? out : [lo, hi];
    }
    // about four ticks at round values (1, 2 or 5 times a power of ten): iterations get
    // whole numbers, accuracies tenths
    const raw = (hi - lo) / 4, power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out.length >= 2 ? out : [lo, hi];
  }

  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
    if (a >= 1e3) return (v / 1e3).toPrecision(3) + "k";
    return a >= 10 || v === 0 ? v.toFixed(0) : v.toPrecision(2);
  }

  // Axes with grid lines; returns the x and y scales.
  function axes(svg, xr, yr, labels, xlog) {
    const x = scale(xr[0], xr[1], M.l, W - M.r, xlog);
    const y = scale(yr[0], yr[1], H - M.b, M.t);
    for (const v of ticks(xr[0], xr[1], xlog)) {
      svg.appendChild(svgEl("line", { class: "grid", x1: x(v), x2: x(v), y1: M.t, y2: H - M.b }));
      svg.appendChild(svgEl("text", { x: x(v), y: H - M.b + 13, "text-anchor": "middle" }, short(v)));
    }
    for (const v of ticks(yr[0], yr[1], false)) {
      svg.appendChild(svgEl("line", { class: "grid", x1: M.l, x2: W - M.r, y1: y(v), y2: y(v) }));
      svg.appendChild(svgEl("text", { x: M.l - 4, y: y(v) + 4, "text-anchor": "end" }, short(v)));
    }
    svg.appendChild(svgEl("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
    svg.appendChild(svgEl("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }));
    svg.appendChild(svgEl("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" }, labels[0]));
    svg.appendChild(svgEl("text", { x: 10, y: M.t - 8 }, labels[1]));
    return { x, y };
  }

  // series: [{name, points: [[x, y, id], ...]}]; onClick(id) for a point. Up to DOTS_MAX
  // points get a dot each; more are drawn as lines only, and the pointer picks the nearest
  // point (a marker and its value follow it; a click selects it): 1,000 iterations made
  // 2,000 dots in these two plots, most of a page's style and layout work.
  const DOTS_MAX = 300;

  function line(title, series, labels, onClick) {
    const svg = frame(title);
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
      return svg;
    }
    const { x, y } = axes(svg, extent(all.map((p) => p[0])), extent(all.map((p) => p[1]), 0.05), labels);
    const dense = all.length > DOTS_MAX;
    const picks = [];
    series.forEach((s, n) => {
      const d = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      svg.appendChild(svgEl("polyline", { class: `line s${n}`, points: d }));
      for (const p of s.points) {
        const at = { class: `dot s${n}`, cx: x(p[0]), cy: y(p[1]), r: 3.5 };
        const text = `#${p[2]} ${s.name} ${p[1].toPrecision(4)}`;
        if (dense) picks.push({ ...at, id: p[2], text });
        else dot(svg, at, p[2], text);
      }
      svg.appendChild(svgEl("text", { x: W - M.r - 4, y: M.t + 12 + 13 * n, "text-anchor": "end", class: `s${n}` }, s.name));
    });
    return dense ? nearest(svg, picks, onClick) : interactive(svg, onClick);
  }

  // One hit area over the plot: the point nearest the pointer gets a marker and its text.
  function nearest(svg, picks, onClick) {
    const marker = svgEl("circle", { class: "dot marker", r: 5, cx: -10, cy: -10 });
    const label = svgEl("text", { x: M.l + 4, y: M.t + 10, class: "pick" }, "");
    const hit = svgEl("rect", { class: "hit", x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b });
    svg.append(marker, label, hit);
    let current = null;
    hit.addEventListener("mousemove", (ev) => {
      const box = svg.getBoundingClientRect();
      const mx = ((ev.clientX - box.left) * W) / box.width, my = ((ev.clientY - box.top) * H) / box.height;
      let best = Infinity;
      for (const p of picks) {
        const d = (p.cx - mx) ** 2 + (p.cy - my) ** 2;
        if (d < best) { best = d; current = p; }
      }
      marker.setAttribute("cx", current.cx);
      marker.setAttribute("cy", current.cy);
      marker.setAttribute("class", current.class + " marker");
      label.textContent = current.text;
    });
    hit.addEventListener("mouseleave", () => { label.textContent = ""; marker.setAttribute("cx", -10); });
    if (onClick) hit.addEventListener("click", () => { if (current) onClick(current.id); });
    return svg;
  }

  // points: [{x, y, id, front, tip}]; the front is drawn as a dashed step line; the x axis
  // turns logarithmic when its values span more than a factor of 20.
  function scatter(title, points, labels, onClick) {
    const svg = frame(title);
    const good = points.filter((p) => p.x > 0 && isFinite(p.y));
    if (!good.length) {
      svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
      return svg;
    }
    let xr = extent(good.map((p) => p.x));
    if (xr[0] <= 0) xr = [good[0].x / 2, good[0].x * 2]; // one x value below 0.5: a factor of 2
    const xlog = xr[1] / xr[0] > 20;
    const xs = xlog ? [xr[0] / 1.3, xr[1] * 1.3] : xr;
    const { x, y } = axes(svg, xs, extent(good.map((p) => p.y), 0.05), labels, xlog);
    const front = good.filter((p) => p.front).sort((a, b) => a.x - b.x);
    if (front.length > 1) {
      const d = front.map((p) => `${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
      svg.appendChild(svgEl("polyline", { class: "front", points: d }));
    }
    for (const p of good) {
      dot(svg, { class: "dot s0" + (p.front ? " on-front" : ""), cx: x(p.x), cy: y(p.y), r: 4 }, p.id,
        p.tip || `#${p.id}: ${p.y.toPrecision(4)} at ${p.x} params${p.front ? " (Pareto front)" : ""}`);
    }
    return interactive(svg, onClick);
  }

  // nodes: [{id, parent, ok, best, label}]; x by iteration, y by generation.
  function lineage(title, nodes, onClick) {
    const svg = frame(title);
    if (!nodes.length) return svg;
    const depth = {};
    for (const n of nodes) depth[n.id] = n.parent !== null && n.parent in depth ? depth[n.parent] + 1 : 0;
    const maxId = Math.max(...nodes.map((n) => n.id), 1);
    const maxDepth = Math.max(...Object.values(depth), 1);
    const x = (i) => M.l + (i / maxId) * (W - M.l - M.r);
    const y = (d) => M.t + 8 + (d / maxDepth) * (H - M.t - M.b - 8);
    const edges = nodes.filter((n) => n.parent !== null && n.parent in depth) // one path for all
      .map((n) => `M${x(n.parent).toFixed(1)},${y(depth[n.parent]).toFixed(1)}L${x(n.id).toFixed(1)},${y(depth[n.id]).toFixed(1)}`);
    if (edges.length) svg.appendChild(svgEl("path", { class: "edge", d: edges.join("") }));
    for (const n of nodes) {
      const cls = n.best ? "node-best" : n.ok ? "node-ok" : "node-bad";
      dot(svg, { class: `dot ${cls}`, cx: x(n.id), cy: y(depth[n.id]), r: 5 }, n.id, n.label);
    }
    svg.appendChild(svgEl("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle" }, "iteration →   generation ↓"));
    return interactive(svg, onClick);
  }

  return { line, scatter, lineage };
})();
