// slimspect dashboard: reads the HTTP API with a viewer key and draws everything itself
// (inline SVG, no library, nothing from the internet).
//
// The key: asked for once and kept in localStorage (or taken from the URL fragment,
// /#key=ssk_..., for a wall display; the fragment never reaches the server and is removed
// from the address bar at once). Every text that comes from the API (station, camera and
// class names are chosen by agents) is set with textContent, never as HTML, and the page
// is served with a Content-Security-Policy that runs no other script.
"use strict";

(() => {
  const KEY_STORE = "slimspect.apiKey";
  const REFRESH_MS = 15000;
  const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#d6336c", "#0c8599", "#f59f00", "#5c7cfa"];
  const SVG = "http://www.w3.org/2000/svg";

  const state = { hours: 24, timer: null, loading: false, crops: new Map(), colors: new Map() };

  class AuthError extends Error {}

  // --- helpers ------------------------------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  }

  function ago(ms) {
    if (ms == null) return "–";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function clock(ms, withDate) {
    const d = new Date(ms);
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: withDate ? undefined : "2-digit" });
    if (!withDate) return time;
    return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  const fmtInt = (n) => (n == null ? "–" : n.toLocaleString());
  const fmtPct = (x) => (x == null ? "–" : `${(x * 100).toFixed(x < 0.1 ? 2 : 1)} %`);

  function colorOf(name) {
    if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
    return state.colors.get(name);
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${String(kind || text).replace(/\s+/g, "-")}`, text });
  }

  function showEmpty(card, empty) {
    card.querySelector(".empty").hidden = !empty;
  }

  // --- the API ------------------------------------------------------------------------------

  function key() {
    return localStorage.getItem(KEY_STORE);
  }

  function takeKeyFromFragment() {
    const match = location.hash.match(/(?:^#|&)key=([^&]+)/);
    if (match) {
      localStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  async function call(path, params = {}, as = "json") {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params)) if (v != null) url.searchParams.set(k, v);
    const response = await fetch(url, { headers: { Authorization: `Bearer ${key()}` } });
    if (response.status === 401) throw new AuthError("the API refused this key");
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) {
        /* not JSON */
      }
      throw new Error(`${path}: ${response.status} ${detail}`);
    }
    return as === "blob" ? response.blob() : response.json();
  }

  // --- KPIs ---------------------------------------------------------------------------------

  function renderKpis(stats, stations, rollouts) {
    if (stats) {
      $("#kpi-frames").textContent = fmtInt(stats.total.frames);
      $("#kpi-rate").textContent = fmtPct(stats.total.defect_rate);
      $("#kpi-defects").textContent = fmtInt(stats.total.defects);
      const per = stats.total.defects_per_frame;
      $("#kpi-per-frame").textContent = per == null ? "" : `${(per * 1000).toFixed(1)} per 1,000 frames`;
    }
    if (stations) {
      const online = stations.filter((s) => s.status === "online").length;
      $("#kpi-stations").textContent = `${online} / ${stations.length}`;
    }
    $("#kpi-rollouts").textContent = rollouts ? rollouts.filter((r) => r.state === "active").length : "–";
  }

  // --- chart: defects per 1,000 frames per class, per hour ----------------------------------

  // Axis ticks at 1, 2 or 5 times a power of ten, at least ``count`` of them to the top.
  function ticks(max, count) {
    if (!(max > 0)) return [0, 0.25, 0.5, 0.75, 1];
    const raw = max / count;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * exp).find((s) => s >= raw);
    const out = [];
    for (let v = 0; v < max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function renderChart(stats) {
    const box = $("#rate-chart");
    const legend = $("#legend");
    box.replaceChildren();
    legend.replaceChildren();
    const width = Math.max(box.clientWidth, 400);
    const height = box.clientHeight || 280;
    const pad = { left: 48, right: 16, top: 12, bottom: 28 };
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    box.append(root);

    const groups = stats.groups;
    const classes = Object.keys(stats.total.by_class).sort();
    classes.forEach(colorOf);
    $("#chart-range").textContent = `${clock(stats.from_ms, true)} – ${clock(stats.to_ms, true)}, hourly`;
    const series = classes.map((name) => ({
      name,
      color: colorOf(name),
      values: groups.map((g) => (g.frames ? ((g.by_class[name] || 0) / g.frames) * 1000 : null)),
    }));
    series.push({
      name: "all classes",
      color: "#8b96a5",
      dashed: true,
      values: groups.map((g) => (g.frames ? (g.defects / g.frames) * 1000 : null)),
    });

    const all = series.flatMap((s) => s.values).filter((v) => v != null);
    const yticks = ticks(Math.max(0, ...all), 4);
    const ymax = yticks[yticks.length - 1];
    const innerW = width - pad.left - pad.right;
    const innerH = height - pad.top - pad.bottom;
    const n = Math.max(groups.length - 1, 1);
    const x = (i) => pad.left + (i / n) * innerW;
    const y = (v) => pad.top + innerH - (v / ymax) * innerH;

    for (const v of yticks) {
      root.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
      const label = v.toLocaleString([], { maximumFractionDigits: 2 });
      root.append(svg("text", { class: "axis-label", x: pad.left - 8, y: y(v) + 4, "text-anchor": "end" }, label));
    }
    const every = Math.max(1, Math.ceil(groups.length / 8));
    groups.forEach((g, i) => {
      if (i % every !== 0) return;
      const d = new Date(g.start_ms);
      const text = groups.length > 48
        ? d.toLocaleDateString([], { month: "short", day: "numeric" })
        : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      root.append(svg("text", { class: "axis-label", x: x(i), y: height - 8, "text-anchor": "middle" }, text));
    });

    if (!all.length) {
      root.append(svg("text", { class: "nodata", x: width / 2, y: height / 2, "text-anchor": "middle" }, "No frames counted in this range"));
    }
    for (const s of series) {
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v == null) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      if (!d) continue;
      const path = svg("path", { class: "series", d, stroke: s.color, "data-series": s.name });
      if (s.dashed) path.setAttribute("stroke-dasharray", "5 4");
      root.append(path);
      if (groups.length <= 48 && !s.dashed) {
        s.values.forEach((v, i) => {
          if (v == null) return;
          const dot = svg("circle", { class: "point", cx: x(i), cy: y(v), r: 3, fill: s.color, "data-series": s.name });
          dot.append(svg("title", {}, `${s.name}: ${v.toFixed(2)} per 1,000 frames, ${clock(groups[i].start_ms, true)}`));
          root.append(dot);
        });
      }
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = s.color;
      const total = s.dashed ? stats.total.defects : stats.total.by_class[s.name];
      legend.append(el("li", { class: s.dashed ? "total" : "" }, swatch, el("span", { text: `${s.name} (${fmtInt(total)})` })));
    }
  }

  // --- stations -----------------------------------------------------------------------------

  function renderStations(stations) {
    const card = $("#stations-card");
    const body = card.querySelector("tbody");
    body.replaceChildren();
    $("#stations-count").textContent = `${stations.length} known`;
    showEmpty(card, !stations.length);
    for (const s of stations) {
      const f = s.fleet;
      const model = s.model_name ? `${s.model_name} ${s.model_version || ""}` : "–";
      const target = f && f.target_version && f.target_version !== s.model_version ? ` → ${f.target_version}` : "";
      body.append(
        el(
          "tr",
          { "data-station": s.station },
          el("td", {}, el("b", { text: s.station })),
          el("td", {}, badge(s.status)),
          el("td", { class: "nowrap" }, model + target, f && f.channel ? el("span", { class: "tag", text: f.channel }) : null),
          el("td", {}, f ? badge(f.health.toLowerCase().replace("health_", ""), f.health) : "–"),
          el("td", { class: "num", text: f ? f.fps.toFixed(1) : "–" }),
          el("td", { class: "num", text: f ? fmtInt(f.spool_depth) : "–" }),
          el("td", { class: "nowrap", text: ago(s.last_heartbeat_ms) }),
          el("td", { class: "nowrap", text: ago(s.last_event_ms) }),
        ),
      );
    }
  }

  // --- rollouts -----------------------------------------------------------------------------

  function progressBar(fraction, left, right) {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.round(Math.min(1, Math.max(0, fraction)) * 100)}%`;
    return el(
      "div",
      { class: "progress-wrap" },
      el("div", { class: "progress", role: "progressbar", "aria-valuenow": Math.round(fraction * 100) }, bar),
      el("div", { class: "progress-label" }, el("span", { text: left }), el("span", { text: right })),
    );
  }

  function target(r) {
    if (r.channel === "stable") return "whole fleet (stable)";
    if (r.stations) return r.stations.join(", ");
    return `${Math.round(r.share * 100)} % of the fleet`;
  }

  function renderRollouts(rollouts, progress) {
    const card = $("#rollouts-card");
    const box = $("#rollouts");
    box.replaceChildren();
    showEmpty(card, !rollouts.length);
    const active = rollouts.filter((r) => r.state === "active");
    $("#rollouts-count").textContent = `${active.length} active, ${rollouts.length} in all`;
    for (const r of active) {
      const p = progress.get(r.id);
      const stations = p ? p.stations : [];
      const on = stations.filter((s) => s.on_version).length;
      const soaked = stations.length && r.soak_s > 0
        ? stations.reduce((sum, s) => sum + Math.min(1, s.soaked_s / r.soak_s), 0) / stations.length
        : on && stations.length ? 1 : 0;
      const gate = p ? p.gate : null;
      const node = el(
        "div",
        { class: "rollout", "data-rollout": r.id },
        el("div", { class: "title" }, el("b", { text: `${r.model_name} ${r.previous_version || "–"} → ${r.version}` }), badge(r.state)),
        el("div", { class: "meta", text: `${r.id} · canary on ${target(r)} · by ${r.created_by} ${ago(r.created_at_ms)}` }),
        progressBar(stations.length ? on / stations.length : 0, "stations on the new version", `${on} / ${stations.length}`),
        progressBar(soaked, "soak", `${Math.round(soaked * 100)} % of ${Math.round(r.soak_s)} s`),
      );
      if (gate) {
        const blockers = gate.blockers || [];
        const g = el("div", { class: "gate" }, badge(gate.verdict));
        g.append(el("span", { text: blockers.length ? " promotion waits for:" : ` ${gate.reason}` }));
        if (blockers.length) g.append(el("ul", {}, ...blockers.map((b) => el("li", { text: b }))));
        node.append(g);
      }
      box.append(node);
    }
    const recent = rollouts.filter((r) => r.state !== "active").slice(0, 5);
    if (recent.length) {
      const body = el("tbody");
      for (const r of recent) {
        body.append(
          el(
            "tr",
            { "data-rollout": r.id },
            el("td", { text: `${r.model_name} ${r.version}` }),
            el("td", {}, badge(r.state.replace("_", " "), r.state)),
            el("td", { text: r.decided_by || r.created_by }),
            el("td", { text: ago(r.updated_at_ms) }),
          ),
        );
      }
      box.append(el("table", { class: "table history" }, el("thead", {}, el("tr", {}, ...["Recent", "State", "By", "When"].map((h) => el("th", { text: h })))), body));
    }
  }

  // --- latest defects -----------------------------------------------------------------------

  async function thumb(url) {
    if (!state.crops.has(url)) {
      state.crops.set(url, call(url, {}, "blob").then((b) => URL.createObjectURL(b)));
    }
    return state.crops.get(url);
  }

  function forgetCrops(keep) {
    for (const [url, blobUrl] of state.crops) {
      if (keep.has(url)) continue;
      state.crops.delete(url);
      blobUrl.then((u) => URL.revokeObjectURL(u)).catch(() => {});
    }
  }

  function renderDefects(page) {
    forgetCrops(new Set(page.items.flatMap((ev) => ev.detections.map((d) => d.crop_url).filter(Boolean))));
    const card = $("#defects-card");
    const body = card.querySelector("tbody");
    body.replaceChildren();
    showEmpty(card, !page.items.length);
    for (const ev of page.items) {
      const cropped = ev.detections.find((d) => d.crop_url);
      let image;
      if (cropped) {
        image = el("img", { class: "thumb", alt: `crop of a ${cropped.class_name} defect` });
        thumb(cropped.crop_url).then((src) => (image.src = src)).catch(() => image.classList.add("none"));
      } else {
        image = el("div", { class: "thumb none", text: "no crop" });
      }
      const chips = ev.detections.map((d) => {
        const dot = el("span", { class: "dot" });
        dot.style.background = colorOf(d.class_name);
        return el("span", { class: "chip" }, dot, el("span", { text: d.class_name }), el("span", { class: "score", text: d.score.toFixed(2) }));
      });
      body.append(
        el(
          "tr",
          { "data-event": ev.event_id },
          el("td", {}, image),
          el("td", { class: "nowrap", title: new Date(ev.captured_at_ms).toISOString(), text: clock(ev.captured_at_ms, true) }),
          el("td", { text: ev.station }),
          el("td", { text: ev.camera }),
          el("td", {}, ...chips),
          el("td", { class: "muted", text: `${ev.model_name} ${ev.model_version}` }),
        ),
      );
    }
  }

  // --- refresh loop -------------------------------------------------------------------------

  function banner(messages) {
    const node = $("#banner");
    node.hidden = !messages.length;
    node.textContent = messages.join(" · ");
  }

  async function refresh() {
    if (!key()) return askKey();
    if (state.loading) return;
    state.loading = true;
    const now = Date.now();
    const from = now - state.hours * 3600 * 1000;
    try {
      const [stats, stations, defects, rollouts] = await Promise.allSettled([
        call("/v1/stats", { group_by: "hour", from, to: now }),
        call("/v1/stations"),
        call("/v1/defects", { limit: 12, from }),
        call("/v1/rollouts"),
      ]);
      const all = [stats, stations, defects, rollouts];
      if (all.some((r) => r.status === "rejected" && r.reason instanceof AuthError)) {
        return askKey("The API refused the stored key. Enter a valid viewer key.");
      }
      const problems = all.filter((r) => r.status === "rejected").map((r) => r.reason.message);
      const value = (r) => (r.status === "fulfilled" ? r.value : null);
      let progress = new Map();
      if (value(rollouts)) {
        const active = value(rollouts).filter((r) => r.state === "active").slice(0, 5);
        const details = await Promise.allSettled(active.map((r) => call(`/v1/rollouts/${encodeURIComponent(r.id)}`)));
        progress = new Map(details.filter((d) => d.status === "fulfilled").map((d) => [d.value.rollout.id, d.value]));
      }
      renderKpis(value(stats), value(stations), value(rollouts));
      if (value(stats)) renderChart(value(stats));
      if (value(stations)) renderStations(value(stations));
      if (value(rollouts)) renderRollouts(value(rollouts), progress);
      if (value(defects)) renderDefects(value(defects));
      banner(problems);
      $("#updated").textContent = `updated ${clock(Date.now())}`;
      document.body.dataset.loaded = "true";
    } catch (err) {
      banner([String(err.message || err)]);
    } finally {
      state.loading = false;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = setInterval(() => {
      if (!document.hidden) refresh();
    }, REFRESH_MS);
  }

  function askKey(message) {
    const dialog = $("#login");
    const error = $("#login-error");
    error.hidden = !message;
    error.textContent = message || "";
    if (!dialog.open) dialog.showModal();
    $("#login-key").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const value = $("#login-key").value.trim();
    if (!value) return;
    localStorage.setItem(KEY_STORE, value);
    try {
      await call("/v1/stations");
    } catch (err) {
      if (err instanceof AuthError) {
        localStorage.removeItem(KEY_STORE);
        return askKey("Unknown or revoked key.");
      }
    }
    $("#login").close();
    $("#login-key").value = "";
    refresh();
  }

  function start() {
    takeKeyFromFragment();
    $("#login-form").addEventListener("submit", useKey);
    $("#login").addEventListener("cancel", (e) => e.preventDefault());
    $("#refresh").addEventListener("click", refresh);
    $("#logout").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORE);
      askKey();
    });
    for (const button of document.querySelectorAll(".range button")) {
      button.addEventListener("click", () => {
        state.hours = Number(button.dataset.hours);
        document.querySelectorAll(".range button").forEach((b) => b.classList.toggle("on", b === button));
        refresh();
      });
    }
    let resize;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(refresh, 300);
    });
    refresh();
    schedule();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
