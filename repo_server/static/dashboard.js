// tufota dashboard: polls the server's JSON API and redraws itself; no build step, no framework.
//
// Rules this file keeps:
// * Every string from the server (device ids, error messages, reasons) is rendered with
//   textContent or as an SVG text node, never as HTML: devices control some of it. Control,
//   format and bidi characters are shown as \u{XXXX} (as tufota_core.safe_text does), so a
//   right-to-left override cannot make "evil" read as "live".
// * The API token lives in sessionStorage (this tab only) and travels as a Bearer header.
// * A failed poll never blanks the page: the last good data stays, a banner says since when
//   the server is unreachable, and polling retries with a capped backoff.
"use strict";

(function () {
  const TOKEN_KEY = "tufota.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ACTIONS = {
    pause: { label: "Pause", allowed: ["active"], text: "Devices stop starting the update; those mid-install finish." },
    resume: { label: "Resume", allowed: ["paused"], text: "Devices start updating again at the current wave." },
    abort: { label: "Abort", allowed: ["active", "paused"], text: "The rollout ends for good; devices stop updating." },
  };
  const FUNNEL = [
    ["eligible", "eligible"],
    ["checked_in", "checked in"],
    ["downloading", "downloading"],
    ["installed", "installing"],
    ["succeeded", "healthy"],
    ["failed", "failed"],
    ["rolled_back", "rolled back"],
    ["stalled", "stalled"],
  ];
  // Exclusive outcomes, drawn as a stacked bar (stalled devices are also counted in one of these).
  const STACK = ["succeeded", "installed", "downloading", "failed", "rolled_back", "waiting"];

  const state = {
    poll: 3,
    timer: null,
    failures: 0,
    lastOk: null,
    seq: 0,
    principal: null,
  };

  // -- small DOM helpers -----------------------------------------------------------------

  const HIDDEN = /[\p{Cc}\p{Cf}\p{Cs}]/gu;

  function visible(value) {
    const hex = (ch) => ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    return String(value).replace(HIDDEN, (ch) => `\\u{${hex(ch)}}`);
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = visible(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") el.textContent = visible(value);
      else el.setAttribute(key, String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(visible(child)));
    }
  }

  const $ = (id) => document.getElementById(id);

  // -- formatting ---------------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const neg = seconds < 0;
    let left = Math.abs(Math.round(seconds));
    const d = Math.floor(left / 86400); left -= d * 86400;
    const hr = Math.floor(left / 3600); left -= hr * 3600;
    const m = Math.floor(left / 60); const sec = left - m * 60;
    const text = d ? `${d}d ${hr}h` : hr ? `${hr}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
    return neg ? `expired ${text} ago` : text;
  }

  function utc(text) {
    if (!text) return "–";
    return text.replace("T", " ").replace("Z", " UTC");
  }

  function clock(text) {
    return text ? text.slice(11, 19) : "";
  }

  function ago(text, nowText) {
    if (!text) return "never";
    const seconds = (Date.parse(nowText) - Date.parse(text)) / 1000;
    return `${duration(Math.max(0, seconds))} ago`;
  }

  function pct(part, whole) {
    return whole ? `${Math.round((1000 * part) / whole) / 10}%` : "–";
  }

  function badge(text, kind) {
    return h("span", { class: `badge ${kind || text}`, text });
  }

  function deviceLink(id) {
    return h("a", { href: `#/devices/${encodeURIComponent(id)}`, class: "device", text: id });
  }

  function releaseLink(hw) {
    return h("a", { href: `#/releases/${encodeURIComponent(hw)}`, class: "mono release", text: hw });
  }

  function rolloutLink(id) {
    return h("a", { href: `#/rollouts/${encodeURIComponent(id)}`, text: id });
  }

  // -- network -----------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
    }
  }

  async function api(path, options) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = Object.assign({ headers, cache: "no-store" }, options || {});
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (_e) {
      body = null;
    }
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  // -- routing -----------------------------------------------------------------------------

  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    if (parts[0] === "rollouts" && parts[1]) return { view: "rollout", id: decodeURIComponent(parts[1]) };
    if (parts[0] === "devices" && parts[1]) return { view: "device", id: decodeURIComponent(parts[1]) };
    if (parts[0] === "releases" && parts[1]) return { view: "release", id: decodeURIComponent(parts[1]) };
    return { view: "overview" };
  }

  function crumbs(r) {
    const nav = $("crumbs");
    const items = [h("a", { href: "#/", text: "overview" })];
    if (r.view === "rollout") items.push(" / rollout ", h("span", { class: "mono", text: r.id }));
    if (r.view === "device") items.push(" / device ", h("span", { class: "mono", text: r.id }));
    if (r.view === "release") items.push(" / releases ", h("span", { class: "mono", text: r.id }));
    nav.replaceChildren(...items);
  }

  // -- the poll loop -----------------------------------------------------------------------

  function schedule(seconds) {
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, seconds * 1000);
  }

  async function refresh() {
    clearTimeout(state.timer);
    const r = route();
    const seq = ++state.seq;
    crumbs(r);
    try {
      let render;
      if (r.view === "rollout") {
        const data = await api(`/api/v1/dashboard/rollouts/${encodeURIComponent(r.id)}`);
        render = () => renderRolloutPage(data);
      } else if (r.view === "device") {
        const data = await api(`/api/v1/devices/${encodeURIComponent(r.id)}`);
        render = () => renderDevicePage(data, r.id);
      } else if (r.view === "release") {
        // The data of 'tufota release list --hardware HW'.
        const data = await api(`/api/v1/release-lines?hardware_id=${encodeURIComponent(r.id)}`);
        render = () => renderReleasePage(data, r.id);
      } else {
        const data = await api("/api/v1/dashboard");
        state.poll = data.poll_seconds || state.poll;
        render = () => renderOverview(data);
      }
      if (seq !== state.seq) return; // a newer refresh (route change) is under way
      render();
      connected();
      schedule(state.poll);
    } catch (error) {
      if (seq !== state.seq) return;
      failed(error, r);
    }
  }

  function connected() {
    state.failures = 0;
    state.lastOk = new Date();
    setConn("live", "live");
    $("updated").textContent = `updated ${state.lastOk.toISOString().slice(11, 19)} UTC`;
    $("banner").hidden = true;
    $("main").setAttribute("aria-busy", "false");
  }

  function failed(error, r) {
    if (error instanceof HttpError && (error.status === 401 || error.status === 403) && r.view !== "device") {
      setConn("signed-out", error.status === 401 ? "sign-in needed" : "forbidden");
      showBanner(`${error.message}. Enter an API token to continue.`);
      $("signin").hidden = false;
      schedule(Math.max(state.poll, 5));
      return;
    }
    if (error instanceof HttpError && error.status === 404) {
      setConn("live", "live");
      $("banner").hidden = true;
      notFound(r, error.message);
      schedule(state.poll * 2);
      return;
    }
    state.failures += 1;
    const wait = Math.min(10, state.poll * 2 ** Math.min(state.failures - 1, 3));
    const since = state.lastOk ? ` Showing data from ${state.lastOk.toISOString().slice(11, 19)} UTC.` : "";
    const why = error instanceof HttpError ? `the server answered ${error.status}: ${error.message}` : "the server is unreachable";
    setConn("offline", "reconnecting…");
    showBanner(`Cannot refresh: ${why}. Retrying in ${Math.round(wait)} s.${since}`);
    schedule(wait);
  }

  function setConn(kind, text) {
    const el = $("conn");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function showBanner(text) {
    const el = $("banner");
    el.textContent = text;
    el.hidden = false;
  }

  function toast(text, kind) {
    const el = $("toast");
    el.textContent = text;
    el.dataset.kind = kind || "info";
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  function notFound(r, message) {
    const what = r.view === "device" ? "device" : "rollout";
    $("main").replaceChildren(
      h("section", { class: "card notfound", id: "not-found" },
        h("h2", { text: `No ${what} ${r.id}` }),
        h("p", { class: "muted", text: message }),
        h("p", {}, h("a", { href: "#/", text: "Back to the overview" }))),
    );
    $("main").setAttribute("aria-busy", "false");
  }

  function who(principal) {
    state.principal = principal;
    const el = $("who");
    if (!principal) {
      el.textContent = "";
      return;
    }
    const label = principal.name === "local" ? "local viewer" : `${principal.name} · ${principal.role}`;
    el.textContent = label;
    el.dataset.role = principal.role;
    $("signin-toggle").textContent = token() ? "Token" : "Sign in";
  }

  // -- overview ----------------------------------------------------------------------------

  function renderOverview(data) {
    who(data.principal);
    const live = data.rollouts.filter((r) => r.state === "active" || r.state === "paused");
    const attention = [];
    for (const r of live) for (const f of r.findings) attention.push(Object.assign({ rollout_id: r.rollout_id }, f));
    const sections = [
      h("section", { class: "summary", id: "summary" }, summaryTiles(data, live)),
      h("section", { id: "rollouts" },
        h("h2", { text: "Rollouts" }),
        data.rollouts.length
          ? data.rollouts.map((r) => rolloutCard(r, data.principal, data.time, false))
          : h("p", { class: "muted", text: "No rollouts yet. Start one with: tufota rollout start …" })),
      h("section", { class: "card", id: "alerts" },
        h("h2", { text: "Open alerts" }),
        alertTable(data.alerts || [], data.time)),
      h("section", { class: "card", id: "attention" },
        h("h2", { text: "Failed and stalled devices" }),
        findingTable(attention, data.time, true)),
      h("div", { class: "grid" },
        h("section", { class: "card", id: "versions" }, h("h2", { text: "Versions per hardware line" }), versions(data.fleet)),
        h("section", { class: "card", id: "health" }, h("h2", { text: "Repository health" }), health(data))),
      h("section", { class: "card", id: "patch" }, h("h2", { text: "Patch status" }), patch(data.patch)),
      h("section", { class: "card", id: "history" }, h("h2", { text: "All rollouts" }), rolloutList(data.rollout_list)),
    ];
    $("main").replaceChildren(...sections);
  }

  function summaryTiles(data, live) {
    const failed = live.reduce((n, r) => n + r.failed_count, 0);
    const stalled = live.reduce((n, r) => n + r.stalled_count, 0);
    const tile = (label, value, kind, id) =>
      h("div", { class: `tile ${kind || ""}`, id }, h("div", { class: "value", text: String(value) }), h("div", { class: "label", text: label }));
    const worst = (data.health || []).reduce((w, r) => (r.level === "critical" ? "critical" : w === "critical" ? w : r.level === "warning" ? "warning" : w), "ok");
    return [
      tile("devices", data.fleet.devices, "", "tile-devices"),
      tile("live rollouts", live.length, "", "tile-live"),
      tile("failed", failed, failed ? "bad" : "", "tile-failed"),
      tile("stalled", stalled, stalled ? "warn" : "", "tile-stalled"),
      tile("open alerts", (data.alerts || []).length, (data.alerts || []).some((a) => a.severity === "critical") ? "bad" : (data.alerts || []).length ? "warn" : "", "tile-alerts"),
      tile("exposed to CVEs", data.patch.exposed_devices, data.patch.critical_devices ? "bad" : data.patch.exposed_devices ? "warn" : "", "tile-exposed"),
      tile("repository", data.repository_error ? "error" : worst, data.repository_error || worst === "critical" ? "bad" : worst === "warning" ? "warn" : "good", "tile-repo"),
    ];
  }

  function rolloutCard(r, principal, now, detail) {
    const waveCount = r.waves.length;
    const card = h("article", { class: `card rollout state-${r.state}`, "data-rollout": r.rollout_id, "data-state": r.state },
      h("header", {},
        h("h3", {}, detail ? h("span", { class: "mono", text: r.rollout_id }) : rolloutLink(r.rollout_id)),
        h("span", { class: "target mono", text: `${r.hardware_id} → ${r.version}` }),
        badge(r.state, `state-${r.state}`),
        h("span", { class: "wave-of", text: `wave ${r.current_wave + 1}/${waveCount} '${r.current_wave_name || r.waves[r.current_wave].name}'` }),
        h("span", { class: "spacer" }),
        actions(r, principal)),
      h("p", { class: "gate" }, h("strong", { text: gateLabel(r.state) }), " ", h("span", { class: "gate-text", text: r.gate || "" })),
      r.reason && r.state !== "active" ? h("p", { class: "reason muted", text: `reason: ${r.reason}` }) : null,
      waveSteps(r),
      h("div", { class: "rollout-body" },
        h("div", { class: "funnel-wrap" }, funnelTable(r)),
        h("div", { class: "chart-wrap" }, adoptionChart(r, now))),
      !detail && (r.failed_count || r.stalled_count)
        ? h("p", { class: "muted" }, `${r.failed_count} failed, ${r.stalled_count} stalled — `, rolloutLink(r.rollout_id), " for details")
        : null,
    );
    return card;
  }

  function gateLabel(stateName) {
    if (stateName === "active") return "Next step:";
    if (stateName === "completed") return "Done:";
    return "Stopped:";
  }

  function actions(r, principal) {
    const box = h("div", { class: "actions" });
    const may = principal && principal.may_operate;
    for (const [name, spec] of Object.entries(ACTIONS)) {
      if (!spec.allowed.includes(r.state)) continue;
      const button = h("button", {
        type: "button",
        class: name === "abort" ? "danger" : "",
        "data-action": name,
        disabled: !may,
        title: may ? `${spec.label} this rollout` : "needs an operator token (Sign in)",
        text: spec.label,
        onclick: () => confirmAction(name, r),
      });
      box.append(button);
    }
    if (!may && ["active", "paused"].includes(r.state)) {
      box.append(h("span", { class: "hint", text: "operator token needed" }));
    }
    return box;
  }

  function waveSteps(r) {
    const states = r.wave_states || [];
    return h("ol", { class: "waves" }, r.waves.map((w, i) =>
      h("li", { class: `wave ${states[i] || ""}`, title: `${w.name}: ${states[i] || ""}` },
        h("span", { class: "name", text: w.name }),
        h("span", { class: "count", text: `${w.succeeded}/${w.eligible}` }))));
  }

  function funnelTable(r) {
    const rows = r.funnel || [];
    const head = h("tr", {}, h("th", { text: "wave" }), FUNNEL.map(([, label]) => h("th", { class: "num", text: label })), h("th", { text: "progress" }));
    const body = rows.map((row, i) => {
      const isTotal = i === rows.length - 1;
      const waveState = isTotal ? "total" : (r.wave_states || [])[i] || "";
      return h("tr", { class: `${isTotal ? "total" : ""} ${waveState}`, "data-wave": row.name },
        h("th", { scope: "row", text: isTotal ? "all waves" : row.name }),
        FUNNEL.map(([key]) => h("td", { class: `num ${key} ${row[key] && ["failed", "rolled_back", "stalled"].includes(key) ? "alert" : ""}`, "data-key": key, text: String(row[key] ?? 0) })),
        h("td", {}, stackBar(row)));
    });
    return h("table", { class: "funnel" }, h("thead", {}, head), h("tbody", {}, body));
  }

  function stackBar(row) {
    const total = row.eligible || 0;
    const bar = h("div", { class: "stack", title: `${row.succeeded}/${total} healthy (${pct(row.succeeded, total)})` });
    if (!total) return bar;
    for (const key of STACK) {
      const n = row[key] || 0;
      if (!n) continue;
      const seg = h("span", { class: `seg ${key}` });
      seg.style.width = `${(100 * n) / total}%`;
      bar.append(seg);
    }
    return bar;
  }

  // -- adoption chart (hand-drawn SVG) ---------------------------------------------------

  function adoptionChart(r, now) {
    const a = r.adoption || { points: [], marks: [], targeted: 0 };
    const W = 520, H = 200, L = 40, R = 12, T = 14, B = 28;
    const pts = a.points.map(([t, ok, bad]) => [Date.parse(t), ok, bad]);
    const start = pts.length ? pts[0][0] : Date.parse(r.created_at);
    const endText = r.state === "active" || r.state === "paused" ? now : r.updated_at;
    const end = Math.max(Date.parse(endText) || start, pts.length ? pts[pts.length - 1][0] : start, start + 60000);
    const top = Math.max(1, a.targeted, ...pts.map((p) => p[1] + p[2]));
    const x = (t) => L + ((t - start) / (end - start)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const step = (index) => {
      let d = "";
      let last = null;
      for (const p of pts) {
        const px = x(p[0]).toFixed(1), py = y(p[index]).toFixed(1);
        d += last === null ? `M${px},${py}` : `H${px}V${py}`;
        last = py;
      }
      if (pts.length) d += `H${x(end).toFixed(1)}`;
      return d;
    };
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `adoption of ${r.version}: ${a.points.length ? a.points[a.points.length - 1][1] : 0} of ${a.targeted} devices` },
      s("title", { text: `Devices on ${r.version} over time` }),
      s("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis" }),
      s("line", { x1: L, x2: L, y1: T, y2: y(0), class: "axis" }),
      s("line", { x1: L, x2: W - R, y1: y(a.targeted), y2: y(a.targeted), class: "target-line" }),
      s("text", { x: L - 4, y: y(0) + 4, class: "tick end", text: "0" }),
      s("text", { x: L - 4, y: y(top) + 4, class: "tick end", text: String(top) }),
      s("text", { x: L, y: H - 8, class: "tick", text: clock(new Date(start).toISOString()) }),
      s("text", { x: W - R, y: H - 8, class: "tick end", text: clock(new Date(end).toISOString()) + " UTC" }),
      a.marks.map((m) => {
        const mx = x(Date.parse(m.at));
        const label = m.kind === "wave_advanced" && m.wave !== null && r.waves[m.wave] ? r.waves[m.wave].name : m.kind;
        return s("g", { class: `mark ${m.kind}` },
          s("title", { text: `${utc(m.at)} ${m.kind}: ${m.reason}` }),
          s("line", { x1: mx, x2: mx, y1: T, y2: y(0) }),
          s("text", { x: mx + 3, y: T + 9, class: "tick", text: label }));
      }),
      s("path", { d: step(2), class: "line failed" }),
      s("path", { d: step(1), class: "line healthy" }),
    );
    const last = pts.length ? pts[pts.length - 1] : [0, 0, 0];
    return h("figure", { class: "adoption" }, svg,
      h("figcaption", {},
        h("span", { class: "key healthy", text: `on ${r.version}: ${last[1]}/${a.targeted} (${pct(last[1], a.targeted)})` }),
        h("span", { class: "key failed", text: `failed: ${last[2]}` }),
        h("span", { class: "key target", text: `targeted: ${a.targeted}` })));
  }

  // -- tables --------------------------------------------------------------------------------

  function table(headers, rows, cls) {
    return h("table", { class: cls || "" },
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { class: t.startsWith("#") ? "num" : "", text: t.replace(/^#/, "") })))),
      h("tbody", {}, rows));
  }

  function findingTable(items, now, withRollout) {
    if (!items.length) return h("p", { class: "muted ok", text: "None: every device of the open waves is progressing." });
    const headers = ["device", withRollout ? "rollout" : null, "wave", "kind", "reason", "#time in state", "last seen"].filter(Boolean);
    const rows = items.map((f) => h("tr", { class: `finding ${f.kind}`, "data-device": f.device_id },
      h("td", {}, deviceLink(f.device_id)),
      withRollout ? h("td", {}, rolloutLink(f.rollout_id)) : null,
      h("td", { text: f.wave }),
      h("td", {}, badge(f.kind.replace("_", " "), f.kind)),
      h("td", { class: "reason", text: f.reason }),
      h("td", { class: "num", text: duration(f.seconds_in_state) }),
      h("td", { text: ago(f.last_seen, now) })));
    return table(headers, rows, "findings");
  }

  function alertTable(alerts, now) {
    if (!alerts.length) return h("p", { class: "muted ok", text: "No open alerts." });
    const rows = alerts.map((a) => h("tr", { class: `alert ${a.severity}`, "data-alert": a.alert_id, "data-kind": a.kind },
      h("td", {}, badge(a.severity, a.severity)),
      h("td", { text: a.kind.replaceAll("_", " ") }),
      h("td", { class: "reason", text: a.summary }),
      h("td", {}, a.device_id ? deviceLink(a.device_id) : a.rollout_id ? rolloutLink(a.rollout_id) : (a.hardware_id || "")),
      h("td", { text: ago(a.opened_at, now) })));
    return table(["severity", "kind", "summary", "about", "opened"], rows, "alerts");
  }

  function versions(fleet) {
    if (!fleet.hardware.length) return h("p", { class: "muted", text: "No devices or releases yet." });
    const palette = ["v0", "v1", "v2", "v3", "v4", "v5"];
    return fleet.hardware.map((hw) => {
      const entries = Object.entries(hw.versions);
      const total = hw.devices || 0;
      const bar = h("div", { class: "stack versions" });
      const legend = h("ul", { class: "legend" });
      entries.forEach(([version, n], i) => {
        const latest = version === hw.latest_version;
        const cls = latest ? "latest" : version === "unknown" ? "unknown" : palette[i % palette.length];
        const seg = h("span", { class: `seg ${cls}`, title: `${version}: ${n}` });
        seg.style.width = `${total ? (100 * n) / total : 0}%`;
        bar.append(seg);
        legend.append(h("li", { "data-version": version }, h("span", { class: `swatch ${cls}` }), `${version}${latest ? " (latest)" : ""}: ${n} (${pct(n, total)})`));
      });
      return h("div", { class: "hw", "data-hardware": hw.hardware_id },
        h("h3", {}, releaseLink(hw.hardware_id), h("span", { class: "muted", text: ` · ${total} devices · latest ${hw.latest_version || "–"}` })),
        bar, legend);
    });
  }

  function health(data) {
    if (data.repository_error) return h("p", { class: "bad", text: data.repository_error });
    const rows = data.health.map((role) => h("tr", { "data-role": role.role, class: role.level },
      h("td", { class: "mono", text: role.role }),
      h("td", { text: role.online ? "online (server re-signs)" : "offline" }),
      h("td", { class: "num", text: duration(role.seconds_left) }),
      h("td", { text: utc(role.expires) }),
      h("td", {}, badge(role.level, role.level))));
    return table(["role", "key", "#valid for", "expires", "status"], rows, "roles");
  }

  function patch(p) {
    const summary = h("p", {},
      h("strong", { text: String(p.exposed_devices) }), " devices lack a fix that a newer signed release has; ",
      h("strong", { class: p.critical_devices ? "bad" : "", text: String(p.critical_devices) }), " of them with CVSS ≥ 7",
      p.unknown_devices ? `; ${p.unknown_devices} never said what they run` : "", ".");
    if (!p.cves.length) return [summary];
    const cveRows = p.cves.map((c) => h("tr", { "data-cve": c.cve },
      h("td", { class: "mono", text: c.cve }),
      h("td", { class: "num" }, cvss(c.cvss)),
      h("td", { class: "num", text: String(c.devices) }),
      h("td", { text: Object.entries(c.fixed_in).map(([hw, v]) => `${hw} ${v}`).join(", ") })));
    const devRows = p.devices.map((d) => h("tr", { "data-device": d.device_id },
      h("td", {}, deviceLink(d.device_id)),
      h("td", { class: "mono", text: d.hardware_id }),
      h("td", { text: d.installed_version }),
      h("td", { text: d.latest_version || "–" }),
      h("td", { class: "num" }, cvss(d.max_cvss)),
      h("td", { class: "mono small", text: d.cves.join(" ") })));
    return [
      summary,
      h("div", { class: "grid" },
        h("div", {}, h("h3", { text: "CVEs, highest CVSS first" }), table(["CVE", "#CVSS", "#devices", "fixed in"], cveRows, "cves")),
        h("div", {}, h("h3", { text: "Exposed devices" }), table(["device", "hardware", "runs", "latest", "#max CVSS", "missing fixes"], devRows, "exposed"),
          p.truncated ? h("p", { class: "muted", text: "Only the most exposed devices are listed." }) : null)),
    ];
  }

  function cvss(score) {
    if (score === null || score === undefined) return h("span", { class: "muted", text: "–" });
    const level = score >= 9 ? "critical" : score >= 7 ? "high" : score >= 4 ? "medium" : "low";
    return badge(score.toFixed(1), `cvss-${level}`);
  }

  function rolloutList(list) {
    if (!list.length) return h("p", { class: "muted", text: "None." });
    return table(["rollout", "hardware", "version", "state", "updated"], list.map((r) =>
      h("tr", { "data-rollout": r.rollout_id },
        h("td", {}, rolloutLink(r.rollout_id)),
        h("td", { class: "mono", text: r.hardware_id }),
        h("td", { text: r.version }),
        h("td", {}, badge(r.state, `state-${r.state}`)),
        h("td", { text: utc(r.updated_at) }))), "list");
  }

  // -- rollout and device pages ---------------------------------------------------------------

  function renderRolloutPage(data) {
    who(data.principal);
    const r = data.rollout;
    const events = (r.history || []).slice().reverse().map((e) => h("tr", {},
      h("td", { text: utc(e.at) }),
      h("td", {}, badge(e.kind.replace("_", " "), e.kind)),
      h("td", { text: e.wave === null ? "" : (r.waves[e.wave] || { name: e.wave }).name }),
      h("td", { class: "reason", text: e.reason })));
    const opts = r.options || {};
    $("main").replaceChildren(
      rolloutCard(r, data.principal, data.time, true),
      h("section", { class: "card", id: "findings" },
        h("h2", { text: "Failed and stalled devices" }),
        findingTable(r.findings, data.time, false),
        r.findings_truncated ? h("p", { class: "muted", text: "More devices than shown." }) : null),
      h("div", { class: "grid" },
        h("section", { class: "card", id: "gates" }, h("h2", { text: "Gates" }),
          h("dl", { class: "facts" },
            fact("success threshold", pct(opts.success_threshold, 1)),
            fact("failure threshold", pct(opts.failure_threshold, 1)),
            fact("soak per wave", duration(opts.soak_seconds)),
            fact("minimum devices", String(opts.min_devices ?? 0)),
            fact("retries", opts.retry_failed ? `${r.retry_generation ?? 0}/${opts.retry_failed} made (backoff ${duration(opts.retry_backoff_seconds)})` : "none"),
            fact("security events", `${r.security_events ?? 0} verification failures (not counted as failures)`),
            fact("clock skew", String(r.clock_skewed ?? 0)),
            fact("transfer", `${mib(r.bytes_fetched)} fetched, ${mib(r.bytes_saved)} saved by ${r.delta_downloads ?? 0} delta downloads`),
            fact("not targeted", String(r.not_targeted ?? 0)),
            fact("target", r.target_path),
            fact("started", utc(r.created_at)),
            fact("published", r.published ? "yes" : "pending"))),
        h("section", { class: "card", id: "events" }, h("h2", { text: "History" }),
          table(["time", "event", "wave", "reason"], events, "events"))),
    );
  }

  function transferText(transfers) {
    if (!transfers.length) return "–";
    const fetched = transfers.reduce((n, t) => n + t.fetched_bytes, 0);
    const saved = transfers.reduce((n, t) => n + t.saved_bytes, 0);
    const last = transfers[transfers.length - 1];
    const how = last.delta_from ? `delta from ${last.delta_from}` : "full image";
    return `${mib(fetched)} fetched, ${mib(saved)} saved (last: ${last.version || "?"} by ${how})`;
  }

  function mib(bytes) {
    return `${((bytes ?? 0) / 1048576).toFixed(1)} MiB`;
  }

  function fact(label, value) {
    return [h("dt", { text: label }), h("dd", { text: value })];
  }

  function renderDevicePage(data, id) {
    const d = data.device;
    const rows = data.history.slice().reverse().map((e) => h("tr", {},
      h("td", { text: utc(e.at) }),
      h("td", { text: e.kind }),
      h("td", {}, e.state ? badge(e.state, e.state) : ""),
      h("td", { text: e.version || "" }),
      h("td", {}, e.rollout_id ? rolloutLink(e.rollout_id) : ""),
      h("td", { class: "num", text: e.seq === null ? "" : String(e.seq) }),
      h("td", { class: "reason", text: e.reason })));
    $("main").replaceChildren(
      h("section", { class: "card", id: "device", "data-device": id },
        h("h2", {}, "Device ", h("span", { class: "mono", text: d.device_id })),
        h("dl", { class: "facts" },
          fact("hardware", d.hardware_id),
          fact("tags", (d.tags || []).join(", ") || "–"),
          fact("registration", d.status),
          fact("installed", d.installed_version || "unknown"),
          fact("state", d.state || "never reported"),
          fact("working towards", d.target_version || "–"),
          fact("last seen", utc(d.last_seen)),
          fact("last error", d.error_code ? `${d.error_code}: ${d.error_message}` : d.failed_code ? `${d.failed_code}: ${d.failed_message}` : "–"),
          fact("last failure", d.failed_state ? `${d.failed_state} ${d.failed_version || ""} at ${utc(d.failed_at)}${d.failed_code ? ` (${d.failed_code}: ${d.failed_message})` : ""}` : "–"),
          fact("downloads", transferText(data.transfers || [])),
          fact("on the CLI", `tufota device show ${d.device_id}`))),
      h("section", { class: "card", id: "reports" },
        h("h2", { text: "Report history (newest first)" }),
        rows.length ? table(["time", "event", "state", "version", "rollout", "#seq", "reason"], rows, "events") : h("p", { class: "muted", text: "No reports yet." })),
    );
  }

  function renderReleasePage(data, hw) {
    const line = data.lines[0];
    if (!line) {
      $("main").replaceChildren(h("section", { class: "card", id: "releases", "data-hardware": hw },
        h("h2", {}, "Releases of ", h("span", { class: "mono", text: hw })),
        h("p", { class: "muted", text: "No signed releases for this hardware id." })));
      return;
    }
    const rows = line.releases.slice().reverse().map((r) => h("tr", { "data-version": r.version },
      h("td", { class: "mono", text: r.version }),
      h("td", {}, badge(r.severity, r.severity)),
      h("td", { class: "num", text: r.cvss === null ? "" : Number(r.cvss).toFixed(1) }),
      h("td", { text: r.fixes.join(" ") }),
      h("td", { text: r.released ? utc(r.released) : "–" }),
      h("td", { class: "mono", text: (r.sha256 || "").slice(0, 16) })));
    $("main").replaceChildren(
      h("section", { class: "card", id: "releases", "data-hardware": hw },
        h("h2", {}, "Releases of ", h("span", { class: "mono", text: line.hardware_id })),
        h("dl", { class: "facts" },
          fact("role", `${line.role} v${line.role_version}`),
          fact("signed by", line.signing_keys.join(", ") || "–"),
          fact("on the CLI", `tufota release list --hardware ${line.hardware_id}`)),
        table(["version", "severity", "cvss", "fixes", "released", "sha256"], rows, "release-table")));
  }

  // -- operator actions ------------------------------------------------------------------------

  function confirmAction(name, r) {
    const spec = ACTIONS[name];
    const dialog = $("confirm");
    $("confirm-title").textContent = `${spec.label} rollout?`;
    $("confirm-text").textContent = `${spec.label} ${r.rollout_id} (${r.hardware_id} → ${r.version}). ${spec.text}`;
    $("confirm-reason").value = "";
    $("confirm-ok").textContent = spec.label;
    $("confirm-ok").className = name === "resume" ? "" : "danger";
    dialog.dataset.action = name;
    dialog.dataset.rollout = r.rollout_id;
    dialog.showModal();
    $("confirm-reason").focus();
  }

  async function performAction(name, rolloutId, reason) {
    try {
      const body = JSON.stringify({ reason: reason || `${name}d from the dashboard` });
      await api(`/api/v1/rollouts/${encodeURIComponent(rolloutId)}/${name}`, { method: "POST", body });
      toast(`${ACTIONS[name].label}: done for ${rolloutId}`, "ok");
    } catch (error) {
      const why = error instanceof HttpError ? `${error.status} ${error.message}` : "the server is unreachable";
      toast(`${ACTIONS[name].label} failed: ${why}`, "bad");
    }
    refresh();
  }

  function setup() {
    const dialog = $("confirm");
    $("confirm-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = dialog.dataset.action, id = dialog.dataset.rollout, reason = $("confirm-reason").value.trim();
      dialog.close();
      performAction(name, id, reason);
    });
    $("confirm-cancel").addEventListener("click", () => dialog.close());

    $("signin-toggle").addEventListener("click", () => {
      const form = $("signin");
      form.hidden = !form.hidden;
      if (!form.hidden) $("token").focus();
    });
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      $("signin").hidden = true;
      refresh();
    });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      $("signin").hidden = true;
      $("signin-toggle").textContent = "Sign in";
      refresh();
    });
    window.addEventListener("hashchange", () => {
      $("main").setAttribute("aria-busy", "true");
      refresh();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
