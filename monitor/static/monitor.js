// plantstream monitor page: plain JS, no build step. Data: the JSON API (initial state) and one
// server-sent-event stream (live 1 s windows, deviations, lot changes). Everything the API
// withholds from this tier is simply never received, so the page has no access logic of its own.
"use strict";

(() => {
  const STALE_MS = 5000; // a value older than this is shown as stale
  const WINDOW_S = 600; // trend window
  const MAX_DEVS = 150;

  const params = new URLSearchParams(location.search);
  if (params.get("token")) sessionStorage.setItem("plantstream-token", params.get("token"));
  const token = sessionStorage.getItem("plantstream-token") || "";

  const S = {
    me: null,
    tree: [],
    tags: new Map(), // "plant/tag" -> tag meta
    latest: new Map(), // "plant/tag" -> {value, tsMs, quality, lot, recvMs}
    rows: new Map(), // "plant/tag" -> <tr> of the visible table
    selected: null, // {plant, path|null}
    charts: new Map(), // "plant/tag" -> chart state
    lots: new Map(), // "plant/equipment" -> lot
    devs: new Map(), // id -> deviation
    events: 0,
  };
  window.__monitor = S; // for operators' console and the browser tests

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  };
  const key = (plant, tag) => `${plant}/${tag}`;

  async function api(path) {
    const r = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    if (a >= 1000) return v.toFixed(0);
    if (a >= 100) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    return v === 0 ? "0" : v.toPrecision(3);
  }
  const num = (v) => (v === null || v === undefined ? "—" : String(Number(v.toPrecision(4))));
  const range = (lo, hi) =>
    lo === null && hi === null ? "—" : lo === null ? `≤ ${num(hi)}` : hi === null ? `≥ ${num(lo)}` : `${num(lo)} – ${num(hi)}`;
  const ago = (ms) => {
    if (ms === undefined) return "";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    return s < 60 ? `${s.toFixed(0)} s` : s < 3600 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
  };
  const hhmmss = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const short = (path, n = 2) => path.split("/").slice(-n).join("/");

  // --- equipment tree ------------------------------------------------------------------------

  function renderTree() {
    const root = el("ul");
    for (const p of S.tree) {
      // enterprise/site levels carry no choice for an engineer: fold them into the plant row.
      let nodes = p.roots;
      while (nodes.length === 1 && ["enterprise", "site"].includes(nodes[0].level)) nodes = nodes[0].children;
      const li = el("li", { class: "plant" }, nodeRow(p.plant, null, "plant", countTags(p.plant, null)));
      li.append(subtree(p.plant, nodes));
      root.append(li);
    }
    $("#tree").replaceChildren(root);
    markSelected();
  }
  function countTags(plant, path) {
    let n = 0;
    for (const t of S.tags.values()) if (t.plant === plant && inSubtree(t.equipment, path)) n++;
    return n;
  }
  const inSubtree = (eq, path) => path === null || eq === path || eq.startsWith(`${path}/`);
  function subtree(plant, nodes) {
    const ul = el("ul");
    for (const n of nodes) {
      const li = el("li", {}, nodeRow(n.name, n.path, n.level, countTags(plant, n.path), plant));
      if (n.children.length) li.append(subtree(plant, n.children));
      ul.append(li);
    }
    return ul;
  }
  function nodeRow(label, path, level, count, plant = label) {
    return el(
      "div",
      {
        class: "node",
        "data-plant": plant,
        "data-path": path ?? "",
        onclick: () => select(plant, path),
      },
      el("span", { class: "lvl" }, level === "plant" ? "▣" : level.slice(0, 4)),
      el("span", {}, label),
      el("span", { class: "n" }, count ? String(count) : ""),
    );
  }
  function markSelected() {
    for (const n of document.querySelectorAll(".tree .node")) {
      const sel = S.selected && n.dataset.plant === S.selected.plant && n.dataset.path === (S.selected.path ?? "");
      n.classList.toggle("selected", Boolean(sel));
    }
  }

  async function select(plant, path) {
    S.selected = { plant, path };
    markSelected();
    $("#crumbs").textContent = [plant, ...(path ? path.split("/") : [])].join("  ›  ");
    $("#tags-title").textContent = `Tags · ${plant}${path ? ` · ${short(path, 2)}` : ""}`;
    renderTable();
    try {
      const q = new URLSearchParams({ plant });
      if (path) q.set("equipment", path);
      const res = await api(`/api/latest?${q}`);
      for (const v of res.values) {
        const k = key(plant, v.tag);
        const tsMs = Date.parse(v.time);
        const cur = S.latest.get(k);
        if (!cur || cur.tsMs < tsMs) S.latest.set(k, { value: v.value, tsMs, quality: v.quality, lot: v.lot, recvMs: tsMs });
      }
      refreshRows();
    } catch (e) {
      console.warn(e);
    }
  }

  // --- tag table -----------------------------------------------------------------------------

  function renderTable() {
    const body = $("#tags tbody");
    S.rows.clear();
    const rows = [];
    if (S.selected) {
      const { plant, path } = S.selected;
      const tags = [...S.tags.values()].filter((t) => t.plant === plant && inSubtree(t.equipment, path));
      tags.sort((a, b) => a.equipment.localeCompare(b.equipment) || a.tag.localeCompare(b.tag));
      for (const t of tags) {
        const k = key(t.plant, t.tag);
        const numeric = t.datatype === "float" || t.datatype === "int";
        const pick = el("input", {
          type: "checkbox",
          class: "pick",
          title: numeric ? "trend this tag" : "not numeric",
          onchange: (e) => (e.target.checked ? addChart(t) : removeChart(k)),
        });
        pick.checked = S.charts.has(k);
        pick.disabled = !numeric;
        const tr = el(
          "tr",
          { "data-key": k, "data-grade": t.grade },
          el("td", {}, pick),
          el("td", { title: t.description || t.tag }, t.tag),
          el("td", { class: "eqp", title: t.equipment }, short(t.equipment, 2)),
          el("td", { class: "val" }, "—"),
          el("td", {}, t.unit),
          el("td", { class: "ql" }),
          el("td", { class: "age" }),
          el("td", { class: "lotc" }),
          el("td", {}, el("span", { class: `grade grade-${t.grade}` }, t.grade)),
        );
        S.rows.set(k, tr);
        rows.push(tr);
      }
    }
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No tags visible here.")));
    refreshRows();
  }

  function qualityOf(v) {
    if (!v) return "stale";
    if (Date.now() - v.recvMs > STALE_MS) return "stale";
    return v.quality;
  }
  function refreshRow(k, tr) {
    const v = S.latest.get(k);
    const q = qualityOf(v);
    tr.className = `q-${q}`;
    tr.querySelector(".val").textContent = v ? fmt(v.value) : "—";
    tr.querySelector(".ql").replaceChildren(el("span", { class: `q q-${q}` }, v ? q : "no data"));
    tr.querySelector(".age").textContent = v ? ago(v.tsMs) : "";
    tr.querySelector(".lotc").textContent = v?.lot ?? "";
  }
  function refreshRows() {
    for (const [k, tr] of S.rows) refreshRow(k, tr);
  }

  // --- trend charts --------------------------------------------------------------------------

  async function addChart(t) {
    const k = key(t.plant, t.tag);
    if (S.charts.has(k)) return;
    const box = el("div", { class: "chart", "data-key": k });
    const title = el("div", { class: "ttl" }, el("b", {}, `${t.tag} [${t.unit}]`), el("span", { class: "lim" }, ""));
    const close = el("button", { class: "close", title: "remove", onclick: () => removeChart(k) }, "✕");
    box.append(title, close);
    const c = { t, box, title, xs: [], ys: [], lo: null, hi: null, target: null, lot: null, u: null, dirty: false };
    S.charts.set(k, c);
    const holder = $("#charts");
    holder.querySelector(".empty")?.remove();
    holder.append(box);
    c.u = new uPlot(chartOpts(c, Math.max(300, box.clientWidth - 16)), [c.xs, c.ys], box);
    const row = S.rows.get(k);
    if (row) row.querySelector("input.pick").checked = true;
    await Promise.all([loadHistory(c), loadLimits(c)]);
  }

  function removeChart(k) {
    const c = S.charts.get(k);
    if (!c) return;
    c.u.destroy();
    c.box.remove();
    S.charts.delete(k);
    const row = S.rows.get(k);
    if (row) row.querySelector("input.pick").checked = false;
    if (!S.charts.size) $("#charts").replaceChildren(el("p", { class: "empty" }, "Pick tags below (☐) to trend them."));
  }

  function chartOpts(c, width) {
    return {
      width,
      height: 190,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true },
        y: {
          range: (u, dmin, dmax) => {
            let lo = Math.min(dmin ?? Infinity, c.lo ?? Infinity);
            let hi = Math.max(dmax ?? -Infinity, c.hi ?? -Infinity);
            if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
            const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.05 || 1;
            return [lo - pad, hi + pad];
          },
        },
      },
      axes: [
        {
          stroke: "#6b7785",
          grid: { stroke: "#eef1f5" },
          ticks: { stroke: "#e2e7ee" },
          values: (u, splits) => {
            const secs = splits.length > 1 && splits[1] - splits[0] < 60;
            const opts = { hour12: false, hour: "2-digit", minute: "2-digit", second: secs ? "2-digit" : undefined };
            return splits.map((v) => new Date(v * 1000).toLocaleTimeString([], opts));
          },
        },
        { stroke: "#6b7785", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#e2e7ee" }, size: 58 },
      ],
      series: [{}, { stroke: "#1f6feb", width: 1.6, spanGaps: false, points: { show: false } }],
      hooks: { drawClear: [(u) => drawBand(u, c)], draw: [(u) => drawLimits(u, c)] },
    };
  }

  // The lot's process window: a shaded band under the grid and series...
  function drawBand(u, c) {
    if (c.lo === null && c.hi === null) return;
    const { left, top, width, height } = u.bbox;
    const yHi = c.hi !== null ? u.valToPos(c.hi, "y", true) : top;
    const yLo = c.lo !== null ? u.valToPos(c.lo, "y", true) : top + height;
    const ctx = u.ctx;
    ctx.save();
    ctx.fillStyle = "rgba(26, 127, 55, 0.08)";
    const y0 = Math.max(top, yHi);
    const y1 = Math.min(top + height, yLo);
    if (y1 > y0) ctx.fillRect(left, y0, width, y1 - y0);
    ctx.restore();
  }

  // ...and its limits as dashed lines over everything (a grid line may sit exactly on a limit).
  function drawLimits(u, c) {
    if (c.lo === null && c.hi === null) return;
    const { left, top, width, height } = u.bbox;
    const yHi = c.hi !== null ? u.valToPos(c.hi, "y", true) : top;
    const yLo = c.lo !== null ? u.valToPos(c.lo, "y", true) : top + height;
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "rgba(198, 40, 40, 0.75)";
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1;
    for (const [v, y] of [
      [c.hi, yHi],
      [c.lo, yLo],
    ]) {
      if (v === null || y < top || y > top + height) continue;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
    }
    ctx.restore();
  }

  async function loadHistory(c) {
    const q = new URLSearchParams({ plant: c.t.plant, tag: c.t.tag, start: `-${WINDOW_S}s`, points: "600" });
    try {
      const h = await api(`/api/history?${q}`);
      const xs = [];
      const ys = [];
      for (const b of h.buckets) {
        xs.push(Date.parse(b.start) / 1000);
        ys.push(b.count > b.bad_count ? b.mean : null);
      }
      // Keep live points newer than the history.
      const last = xs.length ? xs[xs.length - 1] : -Infinity;
      for (let i = 0; i < c.xs.length; i++) {
        if (c.xs[i] > last) {
          xs.push(c.xs[i]);
          ys.push(c.ys[i]);
        }
      }
      c.xs = xs;
      c.ys = ys;
      c.dirty = true;
    } catch (e) {
      console.warn(e);
    }
  }

  async function loadLimits(c) {
    try {
      const l = await api(`/api/limits?${new URLSearchParams({ plant: c.t.plant, tag: c.t.tag })}`);
      c.lo = l.min;
      c.hi = l.max;
      c.lot = l.lot;
      const lim =
        l.min !== null || l.max !== null
          ? `spec ${range(l.min, l.max)} ${l.unit} · lot ${l.lot}`
          : c.t.spec_property
            ? `no active lot spec`
            : "";
      c.title.querySelector(".lim").textContent = lim;
      c.box.dataset.lo = l.min ?? "";
      c.box.dataset.hi = l.max ?? "";
      c.title.querySelector(".lim").title = l.spec_id ? `${l.spec_id}, process limits` : "";
      c.u.setData([c.xs, c.ys]); // rescales y so the whole band is in view
    } catch (e) {
      console.warn(e);
    }
  }

  function pushPoint(k, xs, y) {
    const c = S.charts.get(k);
    if (!c) return;
    const n = c.xs.length;
    if (n && xs <= c.xs[n - 1]) return; // already drawn (history overlap or replay)
    c.xs.push(xs);
    c.ys.push(y);
    const cut = xs - WINDOW_S;
    let drop = 0;
    while (drop < c.xs.length && c.xs[drop] < cut) drop++;
    if (drop) {
      c.xs.splice(0, drop);
      c.ys.splice(0, drop);
    }
    c.dirty = true;
  }

  function frame() {
    for (const c of S.charts.values()) {
      if (c.dirty && c.u) {
        c.dirty = false;
        c.u.setData([c.xs, c.ys]);
      }
    }
    requestAnimationFrame(frame);
  }

  window.addEventListener("resize", () => {
    for (const c of S.charts.values()) c.u.setSize({ width: Math.max(300, c.box.clientWidth - 16), height: 190 });
  });

  // --- lots ----------------------------------------------------------------------------------

  function renderLots(flashKey) {
    const cards = [...S.lots.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, l]) =>
        el(
          "div",
          { class: `lot${k === flashKey ? " flash" : ""}`, "data-key": k, title: `${l.plant} ${l.equipment}` },
          el("div", { class: "eq" }, `${l.plant} · ${short(l.equipment, 2)}`),
          el("div", { class: "id" }, l.lot),
          el("div", { class: "spec" }, `${l.lot_kind || "lot"} · ${l.spec_id || "no spec"} · since ${hhmmss(l.startMs)}`),
        ),
      );
    $("#lots").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No lot is running.")]));
  }

  function onLot(ev) {
    const k = key(ev.plant, ev.equipment);
    if (ev.kind === "lot_start") {
      S.lots.set(k, {
        plant: ev.plant,
        equipment: ev.equipment,
        lot: ev.lot,
        lot_kind: ev.lot_kind,
        spec_id: ev.material,
        startMs: ev.ts_us / 1000,
      });
    } else if (S.lots.get(k)?.lot === ev.lot) {
      S.lots.delete(k);
    }
    renderLots(k);
    // A new lot may bring another material, hence other process limits.
    for (const c of S.charts.values()) {
      if (c.t.plant === ev.plant && inSubtree(c.t.equipment, ev.equipment)) loadLimits(c);
    }
  }

  // --- deviations ----------------------------------------------------------------------------

  function normDev(d, live) {
    return {
      id: d.id,
      kind: d.kind,
      state: d.status,
      plant: d.plant,
      tag: d.tag ?? null,
      lot: d.lot ?? null,
      spec: live ? d.spec : d.spec_id,
      property: d.property || "",
      startMs: live ? d.start_us / 1000 : Date.parse(d.start),
      peak: d.peak ?? null,
      lo: d.limit_min ?? null,
      hi: d.limit_max ?? null,
      unit: d.unit || "",
      count: d.count,
    };
  }

  function renderDevs(newId) {
    const devs = [...S.devs.values()].sort((a, b) => b.startMs - a.startMs).slice(0, MAX_DEVS);
    const items = devs.map((d) => {
      const what = d.kind === "late_data" ? `late data · ${d.tag}` : d.tag || `${d.property} (lab)`;
      const detail =
        d.kind === "late_data"
          ? [`${d.count ?? "?"} samples arrived after their window closed`]
          : [
              "peak ",
              el("b", {}, `${fmt(d.peak)} ${d.unit}`),
              ` · limits ${range(d.lo, d.hi)}`,
              d.lot ? ` · lot ${d.lot}` : "",
            ];
      return el(
        "li",
        { class: `${d.state === "open" ? "open" : ""}${d.id === newId ? " new" : ""}`, "data-id": d.id, "data-tag": d.tag ?? "" },
        el(
          "div",
          { class: "row1" },
          el("span", { class: "what", title: what }, what),
          el("span", { class: "state" }, `${d.state} · ${hhmmss(d.startMs)}`),
        ),
        el("div", { class: "row2" }, `${d.plant} · `, ...detail),
      );
    });
    $("#deviations").replaceChildren(...(items.length ? items : [el("li", {}, "No deviations.")]));
    $("#dev-count").textContent = String([...S.devs.values()].filter((d) => d.state === "open").length);
  }

  // --- live stream ---------------------------------------------------------------------------

  function setConn(state, text) {
    $("#conn").dataset.state = state;
    $("#conn-text").textContent = text;
  }

  function connect() {
    const es = new EventSource(`/api/stream${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    es.onopen = () => setConn("live", "live");
    es.onerror = () => setConn("down", "reconnecting…");
    es.addEventListener("hello", (e) => {
      const h = JSON.parse(e.data);
      setConn(h.kafka === "live" ? "live" : "connecting", h.kafka === "live" ? "live" : `kafka ${h.kafka}`);
    });
    es.addEventListener("aggregates", (e) => {
      const now = Date.now();
      for (const a of JSON.parse(e.data).items) {
        S.events++;
        const k = key(a.plant, a.tag);
        const quality = a.count === 0 ? "stale" : a.bad_count >= a.count ? "bad" : a.bad_count > 0 ? "uncertain" : "good";
        const prev = S.latest.get(k);
        S.latest.set(k, {
          value: a.last ?? prev?.value ?? null,
          tsMs: a.start_us / 1000 + 1000,
          quality,
          lot: a.lot,
          recvMs: now,
        });
        const tr = S.rows.get(k);
        if (tr) refreshRow(k, tr);
        pushPoint(k, a.start_us / 1e6, a.count > a.bad_count ? a.mean : null);
      }
    });
    es.addEventListener("deviation", (e) => {
      const d = normDev(JSON.parse(e.data), true);
      S.devs.set(d.id, d);
      renderDevs(d.id);
    });
    es.addEventListener("lot", (e) => onLot(JSON.parse(e.data)));
  }

  // --- start ---------------------------------------------------------------------------------

  async function start() {
    setInterval(() => {
      $("#clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
      refreshRows();
    }, 1000);
    requestAnimationFrame(frame);
    try {
      S.me = await api("/api/me");
    } catch (e) {
      setConn("down", "unauthorized: add ?token=… to the address");
      return;
    }
    $("#tier").textContent = S.me.tier;
    connect(); // early, so nothing live is missed while the rest loads
    const [tree, tags, lots, devs] = await Promise.all([
      api("/api/equipment"),
      api("/api/tags"),
      api("/api/lots/current").catch(() => ({ lots: [] })),
      api("/api/deviations?limit=60").catch(() => ({ deviations: [] })),
    ]);
    S.tree = tree.plants;
    for (const t of tags.tags) S.tags.set(key(t.plant, t.tag), t);
    for (const l of lots.lots) {
      S.lots.set(key(l.plant, l.equipment), { ...l, startMs: Date.parse(l.start) });
    }
    for (const d of devs.deviations) if (!S.devs.has(d.id)) S.devs.set(d.id, normDev(d, false));
    renderTree();
    renderLots();
    renderDevs();
    // Land on something useful: the first plant, trending its first spec-checked tags.
    const want = params.get("plant") || S.tree[0]?.plant;
    if (want) {
      await select(want, params.get("equipment"));
      const spec = [...S.tags.values()].filter((t) => t.plant === want && t.spec_property).slice(0, 2);
      const first = spec.length ? spec : [...S.tags.values()].filter((t) => t.plant === want && t.datatype === "float").slice(0, 1);
      for (const t of first) addChart(t);
    }
    document.body.dataset.ready = "1";
  }

  start();
})();
