// lemo-nade ui: one iteration in full (code, diff against its parent, error, log, attempts,
// the LLM's prompt and answer). Every text from a candidate or an LLM is set with
// textContent: it is shown as written, never parsed as HTML.
"use strict";

window.LemoDetail = (function () {
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "onclick") e.addEventListener("click", v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function pre(text, cls) {
    return el("pre", cls ? { class: cls } : {}, text);
  }

  function diff(text) {
    const box = el("pre", { class: "diff" });
    for (const ln of text.split("\n")) {
      let cls = "";
      if (ln.startsWith("+") && !ln.startsWith("+++")) cls = "add";
      else if (ln.startsWith("-") && !ln.startsWith("---")) cls = "del";
      else if (ln.startsWith("@@")) cls = "hunk";
      box.appendChild(cls ? el("span", { class: cls }, ln) : document.createTextNode(ln + "\n"));
    }
    return box;
  }

  function section(title, ...body) {
    return [el("h2", {}, title), ...body];
  }

  function instructions(list) {
    if (!list.length) return "none";
    return list.map((p) => `${p[0]} (${Number(p[1]).toPrecision(2)})`).join(", ");
  }

  function render(d) {
    const parts = [
      el("h2", {}, `Iteration #${d.iteration}`),
      el("p", { class: "meta" },
        el("span", {}, `status: ${d.status}`),
        el("span", {}, `parent: ${d.parent === null ? "none" : "#" + d.parent}`),
        el("span", {}, `architect: ${d.architect}`)),
      el("p", { class: "meta" },
        el("span", {}, `instructions in: ${instructions(d.instructions_in)}`),
        el("span", {}, `out: ${instructions(d.instructions_out)}`)),
    ];
    if (d.compliance.length) {
      const rows = d.compliance.map((v) => el("tr", {},
        el("td", { class: "text" }, v.code), el("td", { class: "text" }, v.verdict),
        el("td", { class: "text" }, v.reason)));
      parts.push(...section("Instructions followed", el("table", {},
        el("tr", {}, el("th", {}, "instruction"), el("th", {}, "verdict"), el("th", {}, "why")), ...rows)));
    }
    if (d.error) parts.push(...section("Error", pre(d.error, "error-text")));
    if (d.notes) parts.push(...section("Notes", pre(d.notes)));
    parts.push(...section(d.parent === null ? "Diff" : `Diff against #${d.parent}`,
      d.diff === null ? el("p", { class: "empty" }, "no parent: the first candidate")
        : d.diff ? diff(d.diff) : el("p", { class: "empty" }, "same code as its parent")));
    parts.push(...section("Code", pre(d.code, "code")));
    if (d.log_tail) parts.push(...section("Log tail", pre(d.log_tail)));
    if (d.attempts.length > 1) {
      const rows = d.attempts.map((a) => el("tr", {},
        el("td", {}, a.attempt), el("td", { class: "text" }, a.status),
        el("td", { class: "text" }, a.error || "")));
      parts.push(...section("Attempts", el("table", {},
        el("tr", {}, el("th", {}, "#"), el("th", {}, "status"), el("th", {}, "error")), ...rows)));
    }
    for (const c of d.calls) {
      const body = [];
      for (const m of c.prompt) body.push(el("div", { class: "role" }, m.role), pre(m.content));
      body.push(el("div", { class: "role" }, "answer"),
        c.answer === null ? el("p", { class: "empty" }, c.error || "no answer") : pre(c.answer));
      parts.push(...section(`LLM call, attempt ${c.attempt}`, ...body));
    }
    return parts;
  }

  // Fill `box` with iteration `i` of run `key`.
  async function show(box, key, i) {
    const url = `/api/iteration?run=${encodeURIComponent(key)}&i=${encodeURIComponent(i)}`;
    let d;
    try {
      const res = await fetch(url);
      d = await res.json();
      if (!res.ok) throw new Error(d.error || res.statusText);
    } catch (err) {
      box.replaceChildren(el("p", { class: "empty" }, `cannot load iteration #${i}: ${err.message}`));
      return;
    }
    box.replaceChildren(...render(d));
  }

  return { el, show };
})();
