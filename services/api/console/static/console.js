/* The operator console's script: no framework, no build, no third-party code.
   It calls the admin REST API (/api/v1/...) with the session cookie; unsafe methods
   carry the session's CSRF token in X-CSRF-Token. Charts are inline SVG drawn here. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const REFRESH_MS = 2000;
/* What the signed-in role may do (the pages leave out what it may not; the API refuses
   it anyway): viewer reads, operator changes, admin also deletes. */
const RANKS = { viewer: 0, operator: 1, admin: 2 };
const may = (role) => (RANKS[document.body.dataset.role] ?? -1) >= RANKS[role];
function setDisabled(selector, value) { const node = $(selector); if (node) node.disabled = value; }

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  let payload;
  if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (response.status === 401) { window.location.assign("/console/sign-in"); }
  let data = null;
  const text = await response.text();
  if (text) { try { data = JSON.parse(text); } catch (e) { data = { detail: text }; } }
  return { status: response.status, ok: response.ok, data };
}

function problem(result) {
  const detail = result.data && result.data.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${d.field}: ${d.message}`).join("; ");
  return detail ? String(detail) : `the API answered ${result.status}`;
}

function notice(text, ok = false) {
  const box = $("#notice");
  box.textContent = text; box.hidden = !text; box.classList.toggle("ok", ok);
}

function missing(what) {
  return `${what} is not available on this server yet (the API answered 404 for its endpoint).`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

const fmt = (n) => Number(n || 0).toLocaleString("en-US");
const pct = (x) => `${(100 * x).toFixed(1)}%`;
const shortUtc = (iso) => (iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("Z", "").slice(0, 19) : "");

/* --- counts of a mailing ------------------------------------------------------ */
function tally(mailing) {
  const by = mailing.messages_by_status || {};
  const total = Object.values(by).reduce((a, b) => a + b, 0);
  const sent = by.sent || 0;
  const undelivered = (by.failed || 0) + (by.expired || 0);
  const done = sent + undelivered + (by.cancelled || 0);
  return { total, sent, undelivered, done, waiting: total - done,
    progress: total ? done / total : 0, rate: sent + undelivered ? sent / (sent + undelivered) : null };
}

function progressCell(t) {
  const value = Math.round(100 * t.progress);
  return el("td", {}, el("progress", { max: "100", value: String(value), "aria-label": `Progress ${value}%` }),
    ` ${value}% (${fmt(t.done)} / ${fmt(t.total)})`);
}

/* --- inline SVG charts -------------------------------------------------------- */
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function barChart(container, pairs, label) {
  container.replaceChildren();
  if (!pairs.length) { container.append(el("p", { class: "hint", text: "Nothing to show." })); return; }
  const W = 640, H = 200, pad = 28, max = Math.max(...pairs.map((p) => p[1]), 1);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  const bw = Math.min((W - 2 * pad) / pairs.length, 48);
  pairs.forEach(([key, value], i) => {
    const h = ((H - 2 * pad) * value) / max;
    const bar = svg("rect", { class: "bar", x: pad + i * bw + 1, y: H - pad - h, width: Math.max(bw - 2, 1), height: h });
    bar.append(svg("title", {}, `${key}: ${fmt(value)}`));
    root.append(bar);
    if (pairs.length <= 12 || i % Math.ceil(pairs.length / 12) === 0) {
      root.append(svg("text", { x: pad + i * bw, y: H - pad + 12 }, String(key).slice(5, 16)));
    }
  });
  root.append(svg("line", { class: "axis", x1: pad, y1: H - pad, x2: W - pad, y2: H - pad }));
  root.append(svg("text", { x: 2, y: pad }, fmt(max)));
  container.append(root);
}

function lineChart(container, points, label) {
  container.replaceChildren();
  if (points.length < 2) { container.append(el("p", { class: "hint", text: "Collecting samples…" })); return; }
  const W = 640, H = 200, pad = 28;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 1);
  const x = (t) => pad + ((W - 2 * pad) * (t - t0)) / Math.max(t1 - t0, 1);
  const y = (v) => H - pad - ((H - 2 * pad) * v) / max;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  root.append(svg("polyline", { class: "line", points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }));
  root.append(svg("line", { class: "axis", x1: pad, y1: H - pad, x2: W - pad, y2: H - pad }));
  root.append(svg("text", { x: 2, y: pad }, `${fmt(Math.round(max))}/min`));
  root.append(svg("text", { x: W - pad - 60, y: H - pad + 12 }, `${Math.round((t1 - t0) / 1000)} s`));
  container.append(root);
}

/* --- Mailings ----------------------------------------------------------------- */
async function mailingsPage() {
  const body = $("#mailings-table tbody");
  async function refresh() {
    const result = await api("GET", "/api/v1/notifications/?limit=200");
    if (!result.ok) { notice(`Could not load mailings: ${problem(result)}`); return; }
    const rows = result.data.results.slice().sort((a, b) => b.id - a.id).map((m) => {
      const t = tally(m);
      return el("tr", { "data-mailing": m.id },
        el("td", {}, el("a", { href: `/console/mailings/${m.id}`, text: `#${m.id}` })),
        el("td", { text: m.text.length > 60 ? `${m.text.slice(0, 60)}…` : m.text }),
        el("td", {}, el("span", { class: `state state-${m.state}`, text: m.state })),
        el("td", { text: m.date_time_start }), el("td", { text: m.date_time_stop }),
        progressCell(t),
        el("td", { class: "num", text: t.rate === null ? "–" : pct(t.rate) }));
    });
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "7", text: "No mailings yet." })));
    $("#mailings-updated").textContent = `${result.data.count} mailings · updated ${new Date().toLocaleTimeString()}`;
  }
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

/* --- Mailing ------------------------------------------------------------------ */
async function mailingPage() {
  const id = document.body.dataset.mailingId;
  const base = `/api/v1/notifications/${id}/`;
  const samples = [];
  let offset = 0, refreshes = 0; const limit = 20;

  async function refresh() {
    const result = await api("GET", base);
    if (result.status === 404) { notice(`Mailing ${id} does not exist (any more).`); return false; }
    if (!result.ok) { notice(`Could not load the mailing: ${problem(result)}`); return true; }
    const m = result.data, t = tally(m);
    if (Array.isArray(m.failure_reasons)) reasons = m.failure_reasons;
    $("#mailing-text").textContent = m.text;
    const facts = [["Start (UTC)", m.date_time_start], ["Stop (UTC)", m.date_time_stop],
      ["Tags", m.tag.join(", ") || "any"], ["Operator codes", m.mobile_code.join(", ") || "any"],
      ["Window (client's time)", m.time_interval_start ? `${m.time_interval_start}–${m.time_interval_end}` : "any time"],
      ["Delivered", t.rate === null ? "–" : pct(t.rate)], ["Version", m.version]];
    $("#mailing-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
    const value = Math.round(100 * t.progress);
    $("#mailing-progress").value = value;
    $("#mailing-progress-text").textContent = `${value}% (${fmt(t.done)} of ${fmt(t.total)} done)`;
    const statuses = Object.entries(m.messages_by_status).sort();
    $("#status-counts tbody").replaceChildren(...statuses.map(([s, n]) =>
      el("tr", {}, el("td", { text: s }), el("td", { class: "num", text: fmt(n) }))));
    const paused = m.state === "paused", over = ["finished", "cancelled"].includes(m.state);
    setDisabled('[data-action="pause"]', paused || over);
    setDisabled('[data-action="resume"]', !paused);
    setDisabled('[data-action="cancel"]', over);
    samples.push([Date.now(), t.sent + t.undelivered]);
    if (samples.length > 300) samples.shift();
    $("#mailing-progress").dataset.refreshes = String(++refreshes);
    $("#mailing-state").textContent = m.state;
    $("#mailing-state").className = `state state-${m.state}`;
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i][0] - samples[i - 1][0]) / 60000;
      rates.push([samples[i][0], dt > 0 ? (samples[i][1] - samples[i - 1][1]) / dt : 0]);
    }
    lineChart($("#rate-chart"), rates, "Messages finished per minute, sampled by this page");
    return true;
  }

  async function forecast() {
    const result = await api("GET", `${base}forecast/?limit=1`);
    if (!result.ok) { $("#forecast-chart").textContent = `No forecast: ${problem(result)}`; return; }
    barChart($("#forecast-chart"), Object.entries(result.data.by_hour || {}), "Planned sends per UTC hour");
  }

  let reasons = null; // the mailing's failure_reasons, when the API gives them
  async function failures() {
    const list = $("#failure-reasons");
    let top;
    if (reasons) {
      top = reasons.map((r) => [r.reason, r.count]);
    } else {
      const result = await api("GET", `${base}messages/?status=failed&limit=1000`);
      if (!result.ok) { list.replaceChildren(el("li", { text: problem(result) })); return; }
      const counts = {};
      for (const msg of result.data.results) {
        const reason = msg.last_error || msg.state;
        counts[reason] = (counts[reason] || 0) + 1;
      }
      top = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    }
    top = top.slice(0, 5);
    list.replaceChildren(...top.map(([reason, n]) => el("li", { text: `${reason} — ${fmt(n)}` })));
    if (!top.length) list.append(el("li", { text: "No failed messages." }));
    const select = $("#replay-reason");
    if (!select) return;
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "every failed message" }),
      ...top.map(([reason, n]) => el("option", { value: reason, text: `only "${reason}" (${fmt(n)})` })));
    select.value = top.some(([reason]) => reason === chosen) ? chosen : "";
  }

  async function messages() {
    const status = $("#message-status").value;
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    if (status) query.set("status", status);
    const result = await api("GET", `${base}messages/?${query}`);
    const body = $("#messages-table tbody");
    if (!result.ok) { body.replaceChildren(el("tr", {}, el("td", { colspan: "7", text: problem(result) }))); return; }
    body.replaceChildren(...result.data.results.map((msg) => el("tr", {},
      el("td", { text: msg.id }), el("td", { text: msg.clients.join(", ") }), el("td", { text: msg.state }),
      el("td", { class: "num", text: msg.attempts }), el("td", { text: shortUtc(msg.due_at) }),
      el("td", { text: shortUtc(msg.sent_at) }), el("td", { text: msg.last_error || "" }))));
    const count = result.data.count;
    $("#messages-range").textContent = count ? `${offset + 1}–${Math.min(offset + limit, count)} of ${fmt(count)}` : "No messages";
    $("#messages-prev").disabled = offset === 0;
    $("#messages-next").disabled = offset + limit >= count;
  }

  async function act(action) {
    const ask = { cancel: "Cancel this mailing? Every pending message becomes cancelled; the history stays.",
      delete: "Delete this mailing and all its messages? This cannot be undone." }[action];
    if (ask && !window.confirm(ask)) return;
    if (action === "delete") {
      const result = await api("DELETE", base);
      if (result.ok) { window.location.assign("/console/mailings"); return; }
      notice(`Not deleted: ${problem(result)}`); return;
    }
    const result = await api("POST", `${base}${action}/`);
    if (result.status === 404) {
      const still = await api("GET", base);
      notice(still.ok ? missing(action[0].toUpperCase() + action.slice(1)) : `Mailing ${id} does not exist.`);
      return;
    }
    if (!result.ok) { notice(`${action} refused: ${problem(result)}`); return; }
    notice(`Mailing ${id}: ${result.data.state}.`, true);
    await refresh();
  }

  document.querySelectorAll("[data-action]").forEach((button) =>
    button.addEventListener("click", () => act(button.dataset.action)));
  $("#replay-form")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!window.confirm("Send the failed messages of this mailing again?")) return;
    const reason = $("#replay-reason").value;
    const result = await api("POST", `${base}replay/`, reason ? { reason } : {});
    if (result.status === 404) { notice(missing("Replay")); return; }
    if (!result.ok) { notice(`Replay refused: ${problem(result)}`); return; }
    notice(`Replayed ${fmt(result.data.replayed)} messages.`, true);
    await refresh();
    await Promise.all([failures(), messages()]);
  });
  $("#message-status").addEventListener("change", () => { offset = 0; messages(); });
  $("#messages-prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); messages(); });
  $("#messages-next").addEventListener("click", () => { offset += limit; messages(); });

  if (await refresh()) {
    await Promise.all([forecast(), failures(), messages()]);
    let tick = 0;
    setInterval(async () => { await refresh(); if (++tick % 5 === 0) { failures(); messages(); } }, REFRESH_MS);
  }
}

/* --- SMS segments ------------------------------------------------------------- */
const GSM_BASIC = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED = "^{}\\[~]|€\f";
function smsSegments(text) {
  let septets = 0, gsm = true;
  for (const ch of text) {
    if (GSM_BASIC.includes(ch)) septets += 1;
    else if (GSM_EXTENDED.includes(ch)) septets += 2;
    else { gsm = false; break; }
  }
  if (gsm) return { encoding: "GSM-7", units: septets, segments: septets <= 160 ? 1 : Math.ceil(septets / 153) };
  const units = text.length; // UTF-16 code units, as UCS-2 counts them
  return { encoding: "UCS-2", units, segments: units <= 70 ? 1 : Math.ceil(units / 67) };
}

/* --- New / edit mailing ------------------------------------------------------- */
function inZone(utcValue, zone) {
  if (!utcValue) return "";
  const date = new Date(`${utcValue.length === 16 ? `${utcValue}:00` : utcValue}Z`);
  if (Number.isNaN(date.getTime())) return "";
  try {
    return `${new Intl.DateTimeFormat("en-GB", { timeZone: zone, dateStyle: "medium", timeStyle: "short" }).format(date)} in ${zone}`;
  } catch (e) { return ""; }
}

async function mailingFormPage() {
  const id = document.body.dataset.mailingId;
  const form = $("#mailing-form");
  const field = (name) => form.elements.namedItem(name);
  const zone = $("#f-zone");
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  zone.value = localStorage.getItem("console-zone") || browserZone || "UTC";
  if (!zone.value) zone.value = "UTC";

  if (id) {
    const result = await api("GET", `/api/v1/notifications/${id}/`);
    if (!result.ok) { notice(`Could not load mailing ${id}: ${problem(result)}`); return; }
    const m = result.data;
    field("text").value = m.text;
    field("date_time_start").value = m.date_time_start.replace(" ", "T");
    field("date_time_stop").value = m.date_time_stop.replace(" ", "T");
    field("tag").value = m.tag.join(", ");
    field("mobile_code").value = m.mobile_code.join(", ");
    field("time_interval_start").value = m.time_interval_start || "";
    field("time_interval_end").value = m.time_interval_end || "";
  } else {
    const now = new Date(Date.now() - 60000), later = new Date(Date.now() + 3600 * 1000);
    field("date_time_start").value = now.toISOString().slice(0, 19);
    field("date_time_stop").value = later.toISOString().slice(0, 19);
  }

  const list = (value) => value.split(",").map((s) => s.trim()).filter(Boolean);
  function body() {
    const utc = (value) => (value.length === 16 ? `${value}:00` : value).replace("T", " ");
    const data = { text: field("text").value, date_time_start: utc(field("date_time_start").value),
      date_time_stop: utc(field("date_time_stop").value), tag: list(field("tag").value),
      mobile_code: list(field("mobile_code").value).map((c) => (/^\d+$/.test(c) ? Number(c) : c)) };
    if (field("time_interval_start").value || field("time_interval_end").value) {
      data.time_interval_start = field("time_interval_start").value || null;
      data.time_interval_end = field("time_interval_end").value || null;
    }
    return data;
  }

  function showErrors(result) {
    form.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
    const box = $("#form-errors");
    if (!result) { box.hidden = true; return; }
    const detail = result.data && result.data.detail;
    if (Array.isArray(detail)) {
      for (const d of detail) {
        const name = String(d.field).split(".")[0];
        const slot = $(`#err-${name}`);
        if (slot) slot.textContent = d.message;
        const input = field(name);
        if (input) input.setAttribute("aria-invalid", "true");
      }
    }
    box.textContent = `Not saved: ${problem(result)}`; box.hidden = false;
  }

  function texts() {
    const s = smsSegments(field("text").value);
    $("#text-stats").textContent = `${field("text").value.length} characters · ${s.encoding} · ${s.segments} SMS segment${s.segments === 1 ? "" : "s"}`;
    $("#start-local").textContent = inZone(field("date_time_start").value, zone.value);
    $("#stop-local").textContent = inZone(field("date_time_stop").value, zone.value);
  }

  let timer = null, sequence = 0;
  async function preview() {
    const mine = ++sequence;
    const status = $("#preview-status");
    if (!field("text").value.trim()) { status.textContent = "Write the text to see who it reaches."; return; }
    const result = await api("POST", "/api/v1/notifications/preview/", body());
    if (mine !== sequence) return;
    if (result.status === 404) { status.textContent = missing("The audience preview"); return; }
    if (!result.ok) { status.textContent = `No preview: ${problem(result)}`; return; }
    const p = result.data;
    status.textContent = `Reaches ${fmt(p.audience)} clients.`;
    const facts = [["Audience", fmt(p.audience)], ["Unreachable before stop", fmt(p.unreachable)],
      ["First send (UTC)", p.first_send_at || "–"], ["Last send (UTC)", p.last_send_at || "–"]];
    $("#preview-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    barChart($("#preview-chart"), Object.entries(p.by_hour || {}), "Planned sends per UTC hour");
    const tables = [["Operator code", p.by_operator_code], ["Tag", p.by_tag], ["Time zone", p.by_timezone]];
    $("#preview-tables").replaceChildren(...tables.map(([label, counts]) => el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: label }), el("th", { scope: "col", class: "num", text: "Clients" }))),
      el("tbody", {}, ...Object.entries(counts || {}).slice(0, 15).map(([k, n]) =>
        el("tr", {}, el("td", { text: k }), el("td", { class: "num", text: fmt(n) })))))));
  }
  const changed = () => { texts(); clearTimeout(timer); timer = setTimeout(preview, 400); };
  form.addEventListener("input", changed);
  zone.addEventListener("change", () => { localStorage.setItem("console-zone", zone.value); texts(); });
  texts(); preview();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = id ? await api("PUT", `/api/v1/notifications/${id}/`, body())
      : await api("POST", "/api/v1/notifications/", body());
    if (result.ok) { window.location.assign(`/console/mailings/${result.data.id}`); return; }
    showErrors(result);
  });
}

/* --- Clients ------------------------------------------------------------------ */
async function clientsPage() {
  let offset = 0; const limit = 25;
  const search = $("#client-search"), form = $("#client-form");
  async function load() {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    for (const name of ["telephone", "tag", "mobile_code", "timezone"]) {
      const value = search.elements.namedItem(name).value.trim();
      if (value) query.set(name, value);
    }
    const result = await api("GET", `/api/v1/clients/?${query}`);
    const body = $("#clients-table tbody");
    if (!result.ok) { body.replaceChildren(el("tr", {}, el("td", { colspan: "6", text: problem(result) }))); return; }
    body.replaceChildren(...result.data.results.map((c) => el("tr", { "data-client": c.id },
      el("td", { text: c.id }), el("td", { text: c.telephone }), el("td", { text: c.mobile_code }),
      el("td", { text: c.tag.map((t) => t.name).join(", ") }), el("td", { text: c.timezone }),
      el("td", {},
        ...(may("operator") ? [el("button", { type: "button", class: "secondary", "aria-label": `Edit client ${c.telephone}`, text: "Edit", onclick: () => edit(c) }), " "] : []),
        ...(may("admin") ? [el("button", { type: "button", class: "danger", "aria-label": `Delete client ${c.telephone}`, text: "Delete", onclick: () => remove(c) })] : [])))));
    const count = result.data.count;
    $("#clients-range").textContent = count ? `${offset + 1}–${Math.min(offset + limit, count)} of ${fmt(count)}` : "No clients";
    $("#clients-prev").disabled = offset === 0;
    $("#clients-next").disabled = offset + limit >= count;
  }
  function edit(c) {
    $("#c-id").value = c.id; $("#c-telephone").value = c.telephone;
    $("#c-tags").value = c.tag.map((t) => t.name).join(", "); $("#c-zone").value = c.timezone;
    $("#client-form-h").textContent = `Edit client ${c.id}`; $("#client-save").textContent = "Save client";
    $("#c-telephone").focus();
  }
  function reset() {
    form.reset(); $("#c-id").value = ""; $("#client-errors").hidden = true;
    $("#client-form-h").textContent = "Add a client"; $("#client-save").textContent = "Add client";
  }
  async function remove(c) {
    if (!window.confirm(`Delete client ${c.telephone}? Pending messages to it are cancelled.`)) return;
    const result = await api("DELETE", `/api/v1/clients/${c.id}/`);
    if (!result.ok) { notice(`Not deleted: ${problem(result)}`); return; }
    notice(`Client ${c.telephone} deleted.`, true); load();
  }
  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("#c-id").value;
    const data = { telephone: $("#c-telephone").value.trim(),
      tag: $("#c-tags").value.split(",").map((s) => s.trim()).filter(Boolean), timezone: $("#c-zone").value.trim() || "UTC" };
    const result = id ? await api("PUT", `/api/v1/clients/${id}/`, data) : await api("POST", "/api/v1/clients/", data);
    if (!result.ok) { const box = $("#client-errors"); box.textContent = `Not saved: ${problem(result)}`; box.hidden = false; return; }
    notice(`Client ${result.data.telephone} ${id ? "saved" : "added"} (id ${result.data.id}).`, true);
    reset(); load();
  });
  $("#client-reset")?.addEventListener("click", reset);
  search.addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
  $("#clients-prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
  $("#clients-next").addEventListener("click", () => { offset += limit; load(); });

  $("#import-form")?.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("#i-file").files[0];
    if (!file) return;
    const bar = $("#import-progress"), text = $("#import-progress-text"), out = $("#import-result");
    out.replaceChildren(el("p", { text: "Uploading…" }));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/clients/import/?mode=${encodeURIComponent($("#i-mode").value)}`);
    xhr.setRequestHeader("Content-Type", "text/csv");
    xhr.setRequestHeader("X-CSRF-Token", CSRF);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.round((100 * e.loaded) / e.total);
      text.textContent = `${bar.value}% of ${fmt(e.total)} bytes`;
    });
    xhr.upload.addEventListener("load", () => { bar.value = 100; text.textContent = "Uploaded; importing…"; });
    xhr.addEventListener("error", () => out.replaceChildren(el("p", { class: "error", text: "The upload failed (network)." })));
    xhr.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { detail: xhr.responseText }; }
      const result = { status: xhr.status, ok: xhr.status < 300, data };
      if (xhr.status === 404) { out.replaceChildren(el("p", { class: "error", text: missing("CSV import") })); return; }
      if (!result.ok) { out.replaceChildren(el("p", { class: "error", role: "alert", text: `Nothing imported: ${problem(result)}` })); return; }
      text.textContent = "Done";
      const rejected = data.rejected || [];
      const count = data.rejected_count ?? rejected.length;
      out.replaceChildren(el("p", { id: "import-summary",
        text: `Created ${fmt(data.created)}, updated ${fmt(data.updated)}, unchanged ${fmt(data.unchanged)}, rejected ${fmt(count)}.` }));
      if (count > rejected.length) out.append(el("p", { class: "hint", text: `The first ${fmt(rejected.length)} rejected rows:` }));
      if (rejected.length) {
        out.append(el("table", { class: "grid", id: "import-rejected" },
          el("caption", { text: "Rejected rows" }),
          el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Line" }), el("th", { scope: "col", text: "Field" }), el("th", { scope: "col", text: "Message" }))),
          el("tbody", {}, ...rejected.map((r) => el("tr", {}, el("td", { text: r.line }), el("td", { text: r.field }), el("td", { text: r.message }))))));
      }
      load();
    });
    xhr.send(file);
  });
  load();
}

/* --- Reports ------------------------------------------------------------------ */
async function reportsPage() {
  const result = await api("GET", "/api/v1/notifications/?limit=1000");
  if (!result.ok) { $("#report-summary").textContent = `Could not load mailings: ${problem(result)}`; return; }
  const since = Date.now() - 24 * 3600 * 1000;
  const active = result.data.results.filter((m) =>
    new Date(`${m.date_time_stop.replace(" ", "T")}Z`).getTime() >= since
    && new Date(`${m.date_time_start.replace(" ", "T")}Z`).getTime() <= Date.now());
  let sent = 0, undelivered = 0;
  const rows = active.map((m) => {
    const t = tally(m); sent += t.sent; undelivered += t.undelivered;
    return el("tr", {}, el("td", {}, el("a", { href: `/console/mailings/${m.id}`, text: `#${m.id} ${m.text.slice(0, 40)}` })),
      el("td", { text: m.state }), el("td", { class: "num", text: fmt(t.sent) }),
      el("td", { class: "num", text: fmt(t.undelivered) }), el("td", { class: "num", text: fmt(t.waiting) }),
      el("td", { class: "num", text: t.rate === null ? "–" : pct(t.rate) }));
  });
  $("#report-table tbody").replaceChildren(...rows);
  const rate = sent + undelivered ? pct(sent / (sent + undelivered)) : "–";
  $("#report-summary").textContent = `${active.length} mailings, ${fmt(sent)} sent, ${fmt(undelivered)} undelivered, ${rate} delivered.`;
}

const PAGES = { mailings: mailingsPage, mailing: mailingPage, "mailing-form": mailingFormPage,
  clients: clientsPage, reports: reportsPage };
document.addEventListener("DOMContentLoaded", () => {
  const run = PAGES[document.body.dataset.page];
  if (run) run().catch((error) => notice(`Something went wrong: ${error.message}`));
});
