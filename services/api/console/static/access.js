/* The console's API keys and Audit pages (loaded by those pages only, after
   console.js, whose helpers it uses: $, el, api, problem, notice, fmt, shortUtc). */
"use strict";

/* --- API keys (admin) --------------------------------------------------------- */
async function apiKeysPage() {
  let offset = 0; const limit = 25;
  const form = $("#key-form"), shown = $("#new-key");
  async function load() {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset),
      revoked: String($("#keys-revoked").checked) });
    const result = await api("GET", `/api/v1/api-keys/?${query}`);
    const body = $("#keys-table tbody");
    if (!result.ok) { body.replaceChildren(el("tr", {}, el("td", { colspan: "8", text: problem(result) }))); return; }
    body.replaceChildren(...result.data.results.map((k) => el("tr", { "data-key": k.id },
      el("td", { text: k.id }), el("td", { text: k.name }), el("td", { text: k.role }),
      el("td", { text: shortUtc(k.created_at) }), el("td", { text: k.created_by }),
      el("td", { text: k.last_used_at ? shortUtc(k.last_used_at) : "never" }),
      el("td", { text: k.revoked_at ? `revoked ${shortUtc(k.revoked_at)} by ${k.revoked_by}` : "in use" }),
      el("td", {}, k.revoked_at ? "" : el("button", { type: "button", class: "danger",
        "aria-label": `Revoke key ${k.name}`, text: "Revoke", onclick: () => revoke(k) })))));
    const count = result.data.count;
    $("#keys-range").textContent = count ? `${offset + 1}–${Math.min(offset + limit, count)} of ${fmt(count)}` : "No keys";
    $("#keys-prev").disabled = offset === 0;
    $("#keys-next").disabled = offset + limit >= count;
  }
  async function revoke(k) {
    if (!window.confirm(`Revoke the key ${k.name} (${k.role})? Integrations using it are refused within a second; this cannot be undone.`)) return;
    const result = await api("DELETE", `/api/v1/api-keys/${k.id}/`);
    if (!result.ok) { notice(`Not revoked: ${problem(result)}`); return; }
    notice(`Key ${k.name} revoked.`, true); load();
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errors = $("#key-errors"); errors.hidden = true;
    const result = await api("POST", "/api/v1/api-keys/", { name: $("#k-name").value.trim(), role: $("#k-role").value });
    if (!result.ok) { errors.textContent = `Not created: ${problem(result)}`; errors.hidden = false; return; }
    $("#new-key-name").textContent = `${result.data.name} (${result.data.role})`;
    const value = $("#new-key-value"); value.value = result.data.key; value.classList.add("key-value");
    shown.hidden = false; value.focus(); value.select();
    notice(`Key ${result.data.name} created: copy it now, it is shown this once.`, true);
    form.reset(); load();
  });
  $("#new-key-copy").addEventListener("click", async () => {
    const value = $("#new-key-value");
    try { await navigator.clipboard.writeText(value.value); notice("Key copied to the clipboard.", true); }
    catch (e) { value.select(); notice("Copy did not work here: the key is selected, press Ctrl+C (⌘C)."); }
  });
  $("#new-key-done").addEventListener("click", () => {
    $("#new-key-value").value = ""; shown.hidden = true; notice("");
  });
  $("#keys-revoked").addEventListener("change", () => { offset = 0; load(); });
  $("#keys-prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
  $("#keys-next").addEventListener("click", () => { offset += limit; load(); });
  load();
}

/* --- Audit (operator, admin) -------------------------------------------------- */
function describe(details) {
  return Object.entries(details || {}).map(([key, value]) =>
    `${key}: ${Array.isArray(value) ? value.join(", ") : String(value)}`).join("\n");
}

async function auditPage() {
  let offset = 0; const limit = 50;
  const search = $("#audit-search");
  async function load() {
    const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
    for (const name of ["actor", "action", "object_type", "object_id"]) {
      const value = search.elements.namedItem(name).value.trim();
      if (value) query.set(name, value);
    }
    const result = await api("GET", `/api/v1/audit/?${query}`);
    const body = $("#audit-table tbody");
    if (!result.ok) { body.replaceChildren(el("tr", {}, el("td", { colspan: "7", text: problem(result) }))); return; }
    body.replaceChildren(...result.data.results.map((e) => el("tr", {},
      el("td", { text: shortUtc(e.at) }), el("td", { text: `${e.actor} (${e.via})` }), el("td", { text: e.action }),
      el("td", {}, e.object_type === "mailing" && e.object_id
        ? el("a", { href: `/console/mailings/${e.object_id}`, text: `mailing ${e.object_id}` })
        : [e.object_type, e.object_id].filter(Boolean).join(" ")),
      el("td", { class: "details", text: describe(e.details) }),
      el("td", { text: e.remote_addr || "" }), el("td", { class: "details", text: e.request_id || "" }))));
    const count = result.data.count;
    $("#audit-range").textContent = count ? `${offset + 1}–${Math.min(offset + limit, count)} of ${fmt(count)}` : "No entries";
    $("#audit-prev").disabled = offset === 0;
    $("#audit-next").disabled = offset + limit >= count;
  }
  search.addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
  $("#audit-prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
  $("#audit-next").addEventListener("click", () => { offset += limit; load(); });
  load();
}

const ACCESS_PAGES = { "api-keys": apiKeysPage, audit: auditPage };
document.addEventListener("DOMContentLoaded", () => {
  const run = ACCESS_PAGES[document.body.dataset.page];
  if (run) run().catch((error) => notice(`Something went wrong: ${error.message}`));
});
