// lemo-nade ui: the runs list, a run page and a sweep page, each kept current by polling
// its JSON endpoint (a run page sends the version it has; an unchanged run answers in a
// few bytes). Text goes into the DOM with text nodes only.
"use strict";

(function () {
  const el = window.LemoDetail.el;
  const Plots = window.LemoPlots;
  const app = document.getElementById("app");
  const live = document.getElementById("live");
  const RUN_POLL_MS = 1000, LIST_POLL_MS = 2000;

  const INT = new Intl.NumberFormat("en-US"); // one formatter: toLocaleString makes one per call
  function num(v, digits) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) >= 1000) return INT.format(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(2);
    return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 3 : digits);
  }
  const pct = (v) => (v === null || v === undefined ? "—" : (100 * v).toFixed(2) + "%");
  const list = (v) => (v && v.length ? v.join(" ") : "—");
  const usd = (v) => (v === null || v === undefined ? "—" : "$" + (v !== 0 && v < 0.01 ? v.toPrecision(2) : v.toFixed(2)));

  // seconds as "2h 05m", "3m 20s" or "45s"; "—" when there is none
  function duration(s) {
    if (s === null || s === undefined) return "—";
    const t = Math.round(s), h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60);
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    return m ? `${m}m ${String(t % 60).padStart(2, "0")}s` : `${t}s`;
  }

  function setLive(ok, text) {
    live.textContent = text;
    live.className = ok ? "live" : "live stale";
  }

  async function getJSON(url) {
    const res = await fetch(url, { cache: "no-store" });
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    return doc;
  }

  // Call `tick` now and every `ms`, showing whether the last poll worked.
  function poll(tick, ms) {
    async function once() {
      try {
        await tick();
        setLive(true, "live · " + new Date().toLocaleTimeString());
      } catch (err) {
        setLive(false, "not updating: " + err.message);
      }
      setTimeout(once, ms);
    }
    once();
  }

  // A table; rows are built into one fragment, cells get their text as a text node
  // (never parsed). `opts.onRow(row)` is one delegated click handler for the whole body,
  // found through the row's data-row index, not one closure per row.
  function table(columns, rows, opts) {
    const head = el("tr", {}, ...columns.map((c) => el("th", {}, c[0])));
    const body = document.createElement("tbody");
    const frag = document.createDocumentFragment();
    rows.forEach((r, i) => {
      const tr = document.createElement("tr");
      const attrs = opts && opts.rowAttrs ? opts.rowAttrs(r) : {};
      for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, String(v));
      if (opts && opts.onRow) tr.dataset.row = i;
      for (const c of columns) {
        const td = tr.insertCell();
        if (c[2]) td.className = c[2];
        const v = c[1](r);
        if (v instanceof Node) td.appendChild(v);
        else td.textContent = String(v);
      }
      frag.appendChild(tr);
    });
    body.appendChild(frag);
    if (opts && opts.onRow) {
      body.addEventListener("click", (ev) => {
        const tr = ev.target.closest("tr[data-row]");
        if (tr) opts.onRow(rows[Number(tr.dataset.row)]);
      });
    }
    return el("table", opts && opts.id ? { id: opts.id } : {}, el("thead", {}, head), body);
  }

  const status = (r) => el("span", { class: "status-" + r.status }, r.status);
  const link = (href, text) => el("a", { href }, text);

  // -- the runs list ---------------------------------------------------------------------

  const RUN_COLUMNS = [
    ["run", (r) => link("/run?run=" + encodeURIComponent(r.key), r.run_id || r.dir), "text"],
    ["status", status, "text"],
    ["dataset", (r) => r.dataset || "—", "text"],
    ["architect", (r) => r.architect || "—", "text"],
    ["setting", (r) => num(r.setting)],
    ["iterations", (r) => (r.iterations_planned ? `${r.iterations_done} / ${r.iterations_planned}` : "—")],
    ["best CM", (r) => num(r.best_cm)],
    ["best val acc", (r) => pct(r.best_accuracy)],
    ["energy kWh-PUE", (r) => num(r.energy_kwh_pue) + (r.energy_source ? ` (${r.energy_source})` : "")],
    ["LLM cost", (r) => usd(r.llm_cost_usd)],
    ["ETA (estimate)", (r) => duration(r.eta_s)],
    ["note", (r) => r.error || r.reason || "", "text"],
  ];

  function runsPage() {
    document.title = "lemo-nade: runs";
    poll(async () => {
      const doc = await getJSON("/api/runs");
      const parts = [el("h1", {}, "Runs"), el("p", { class: "meta" }, "from " + doc.dirs.join(", "))];
      parts.push(doc.runs.length ? table(RUN_COLUMNS, doc.runs, { id: "runs" }) : el("p", { class: "empty" }, "no runs yet"));
      if (doc.sweeps.length) {
        parts.push(el("h2", {}, "Sweeps"));
        parts.push(el("ul", {}, ...doc.sweeps.map((s) => el("li", {}, link("/sweep?sweep=" + encodeURIComponent(s.key), s.dir)))));
      }
      app.replaceChildren(...parts);
    }, LIST_POLL_MS);
  }

  // -- a run ---------------------------------------------------------------------------

  const ITER_COLUMNS = [
    ["#", (r) => (r.best ? "★ " : "") + r.iteration],
    ["parent", (r) => (r.parent === null ? "—" : "#" + r.parent)],
    ["status", status, "text"],
    ["A1", (r) => pct(r.A1)],
    ["A2", (r) => pct(r.A2)],
    ["params", (r) => num(r.P)],
    ["FLOPs/img", (r) => num(r.flops_per_image)],
    ["FPS", (r) => num(r.F, 0)],
    ["E1 kWh", (r) => num(r.E1_kwh)],
    ["E2 kWh", (r) => num(r.E2_kwh)],
    ["energy", (r) => r.energy_source || "—", "text"],
    ["CM", (r) => num(r.CM)],
    ["instructions", (r) => list(r.instructions_in), "text"],
    ["followed", (r) => r.instructions_followed || "—", "text"],
    ["error", (r) => r.error || "", "text error"],
  ];

  function runMeta(run, doc) {
    const items = [
      `status: ${run.status}${run.reason ? " (" + run.reason + ")" : ""}`,
      `dataset: ${run.dataset || "—"}`, `architect: ${run.architect || "—"}`,
      `setting: ${num(run.setting)}`,
      `iterations: ${run.iterations_done ?? 0} / ${run.iterations_planned ?? "?"}`,
      `best CM: ${num(run.best_cm)}`, `best val acc: ${pct(run.best_accuracy)}`,
      `energy: ${num(run.energy_kwh_pue)} kWh-PUE`,
    ];
    if (doc.llm && doc.llm.llm_calls) items.push(`LLM: ${doc.llm.llm_calls} calls, ${doc.llm.llm_tokens} tokens`);
    if (doc.follow_rate !== null && doc.follow_rate !== undefined) items.push(`instructions followed: ${pct(doc.follow_rate)}`);
    if (run.llm_cost_usd !== null && run.llm_cost_usd !== undefined) items.push(`LLM cost: ${usd(run.llm_cost_usd)}`);
    if (run.status === "running") items.push(`ETA (estimate): ${duration(run.eta_s)}`);
    return el("p", { class: "meta", id: "meta" }, ...items.map((t) => el("span", {}, t)));
  }

  // the budgets the config sets, as used / limit, and the retrain and export result
  function runBudgets(doc) {
    const parts = [];
    const amount = (b, v) => (b.unit === "h" ? duration(v * 3600) : b.unit === "USD" ? usd(v) : num(v) + " " + b.unit);
    if (doc.budgets && doc.budgets.length) {
      parts.push(el("h2", {}, "Budgets"), table([
        ["budget", (b) => b.budget, "text"],
        ["used", (b) => amount(b, b.used)],
        ["limit", (b) => amount(b, b.limit)],
        ["used %", (b) => pct(b.fraction)],
      ], doc.budgets, { id: "budgets" }));
    }
    const rt = doc.retrain;
    if (rt) {
      parts.push(el("h2", {}, "Retrain"), table([
        ["model", (r) => (r.iteration === null ? "—" : "#" + r.iteration)],
        ["test acc", (r) => pct(r.test_accuracy)],
        ["epochs", (r) => num(r.epochs)],
        ["best epoch", (r) => num(r.best_epoch)],
        ["hours", (r) => num(r.hours)],
        ["kWh-PUE", (r) => num(r.kwh_pue)],
        ["exported", (r) => list(r.exports), "text"],
      ], [rt], { id: "retrain" }));
    }
    return parts;
  }

  function runPlots(doc, select) {
    const ok = doc.rows.filter((r) => r.CM !== null);
    const acc = doc.rows.filter((r) => r.A2 !== null);
    const front = new Set(doc.pareto);
    const best = new Set(doc.rows.filter((r) => r.best).map((r) => r.iteration));
    return el("div", { class: "plots", id: "plots" },
      Plots.line("CM per iteration", [{ name: "CM", points: ok.map((r) => [r.iteration, r.CM, r.iteration]) }], ["iteration", "CM"], select),
      Plots.line("accuracy per iteration", [
        { name: "A1 train", points: doc.rows.filter((r) => r.A1 !== null).map((r) => [r.iteration, r.A1, r.iteration]) },
        { name: "A2 val", points: acc.map((r) => [r.iteration, r.A2, r.iteration]) },
      ], ["iteration", "accuracy"], select),
      Plots.scatter("validation accuracy vs parameters",
        acc.filter((r) => r.P).map((r) => ({ x: r.P, y: r.A2, id: r.iteration, front: front.has(r.iteration) })),
        ["parameters", "A2"], select),
      Plots.lineage("lineage", doc.lineage.map((n) => ({
        id: n.child, parent: n.parent, ok: n.status === "ok",
        best: best.has(n.child),
        label: `#${n.child} ${n.status}` + (n.parent === null ? "" : ` ← #${n.parent} via ${list(n.instructions)}`),
      })), select));
  }

  // The iterations table shows one page of PAGE_ROWS rows: by default the latest, followed
  // as iterations commit (a 1,000-row table was 36,000 DOM nodes and most of a second of
  // style and layout); "all" shows every row. The plots always show every iteration.
  const PAGE_ROWS = 100;

  // "iterations 901–1000 of 1000" and the buttons; current null: every row is shown
  function pager(n, current, last, go) {
    const button = (id, text, target, off) =>
      el("button", off ? { id, disabled: "" } : { id, onclick: () => go(target) }, text);
    if (current === null) return el("p", { class: "pager", id: "pager" }, `all ${n} iterations `, button("page-latest", "latest", null, false));
    const from = current * PAGE_ROWS + 1, to = Math.min(n, (current + 1) * PAGE_ROWS);
    return el("p", { class: "pager", id: "pager" },
      `iterations ${from}–${to} of ${n} `,
      button("page-earlier", "‹ earlier", current - 1, current === 0),
      button("page-later", "later ›", current + 1, current === last),
      button("page-latest", "latest", null, current === last),
      button("page-all", "all", "all", false));
  }

  function runPage(key) {
    let version = "", selected = null, last = null, page = null; // page null: the latest
    const detail = el("div", { id: "detail" }, el("p", { class: "empty" }, "click an iteration for its code, diff and error"));
    const lastPage = (n) => Math.ceil(n / PAGE_ROWS) - 1;
    // the page to show; the last one is null ("latest"), which follows new iterations
    const pageFor = (target) => (typeof target === "number" && target >= lastPage(last.rows.length) ? null : target);
    const select = (i) => {
      selected = i;
      const at = last ? last.rows.findIndex((r) => r.iteration === i) : -1;
      if (page !== "all" && at >= 0 && last.rows.length > PAGE_ROWS) page = pageFor(Math.floor(at / PAGE_ROWS));
      if (last) render(last);
      window.LemoDetail.show(detail, key, i);
    };
    const go = (target) => { page = pageFor(target); render(last); };
    function shown(doc) {
      const n = doc.rows.length;
      if (n <= PAGE_ROWS) return [doc.rows, null];
      if (page === "all") return [doc.rows, pager(n, null, null, go)];
      const end = lastPage(n);
      const current = page === null ? end : Math.min(page, end);
      return [doc.rows.slice(current * PAGE_ROWS, (current + 1) * PAGE_ROWS), pager(n, current, end, go)];
    }
    function render(doc) {
      const run = doc.run;
      document.title = "lemo-nade: " + (run.run_id || run.dir);
      const [rowsShown, nav] = shown(doc);
      const rows = table(ITER_COLUMNS, rowsShown, {
        id: "iterations",
        rowAttrs: (r) => ({
          class: "clickable" + (r.best ? " best" : "") + (r.iteration === selected ? " selected" : ""),
          "data-iteration": r.iteration,
        }),
        onRow: (r) => select(r.iteration),
      });
      const parts = [el("h1", {}, "Run " + (run.run_id || run.dir)), runMeta(run, doc)];
      if (run.error) parts.push(el("p", { class: "status-unreadable" }, run.error));
      parts.push(...runBudgets(doc), runPlots(doc, select), el("h2", {}, "Iterations"), nav, rows, detail);
      app.replaceChildren(...parts.filter((p) => p !== null));
    }
    poll(async () => {
      const doc = await getJSON(`/api/run?run=${encodeURIComponent(key)}&v=${encodeURIComponent(version)}`);
      if (doc.unchanged) return;
      version = doc.version;
      last = doc;
      render(doc);
      if (selected !== null && doc.run.status === "running") window.LemoDetail.show(detail, key, selected);
    }, RUN_POLL_MS);
  }

  // -- a sweep ---------------------------------------------------------------------------

  // the paper's table (reporting.data.paper_row): with a retrain, hours and energy include it
  const PAPER_COLUMNS = [
    ["test acc", (p) => pct(p.test_accuracy)],
    ["val acc", (p) => pct(p.validation_accuracy)],
    ["params", (p) => num(p.params)],
    ["hours", (p) => num(p.hours)],
    ["kWh-PUE", (p) => num(p.kwh_pue)],
    ["CO2 lbs", (p) => num(p.co2_lbs)],
    ["FPS", (p) => num(p.fps, 0)],
    ["infer kWh-PUE/img", (p) => num(p.inference_kwh_pue_per_image)],
    ["infer CO2 lbs/img", (p) => num(p.inference_co2_lbs_per_image)],
    ["with retrain", (p) => (p.includes_retrain ? "yes" : "no"), "text"],
  ];

  function sweepPaper(doc) {
    const axes = doc.axes.map((a) => [a, (r) => num(r[a]), "text"]);
    const cols = PAPER_COLUMNS.map((c) => [c[0], (r) => (r.paper ? c[1](r.paper) : "—"), c[2]]);
    const runs = doc.rows.filter((r) => r.paper && r.paper.validation_accuracy !== null && r.energy_kwh_pue > 0);
    const points = runs.map((r) => ({
      x: r.energy_kwh_pue, y: r.paper.validation_accuracy, id: r.run,
      tip: `${r.run}: val acc ${pct(r.paper.validation_accuracy)} at ${num(r.energy_kwh_pue)} kWh-PUE`,
    }));
    const open = (name) => { location.href = "/run?run=" + encodeURIComponent(doc.key + "/" + name); };
    return [
      el("h2", {}, "Paper table"),
      table([["run", (r) => r.run, "text"], ...axes, ...cols], doc.rows, { id: "paper" }),
      el("div", { class: "plots", id: "sweep-plots" },
        Plots.scatter("accuracy vs search energy", points, ["search kWh-PUE", "val acc"], open)),
    ];
  }

  function sweepPage(key) {
    poll(async () => {
      const doc = await getJSON("/api/sweep?sweep=" + encodeURIComponent(key));
      document.title = "lemo-nade: sweep " + doc.dir;
      const columns = [
        ["run", (r) => link("/run?run=" + encodeURIComponent(r.key), r.run), "text"],
        ...doc.axes.map((a) => [a, (r) => num(r[a]), "text"]),
        ...RUN_COLUMNS.slice(1).filter((c) => !doc.axes.includes(c[0])), // an axis shows once
      ];
      app.replaceChildren(el("h1", {}, "Sweep " + doc.dir), table(columns, doc.rows, { id: "sweep" }), ...sweepPaper(doc));
    }, LIST_POLL_MS);
  }

  const params = new URLSearchParams(location.search);
  if (location.pathname === "/run") runPage(params.get("run") || "");
  else if (location.pathname === "/sweep") sweepPage(params.get("sweep") || "");
  else runsPage();
})();
