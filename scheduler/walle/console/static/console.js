// Walle console: polls /api/state and draws it. Every value from the server is user data
// (job names, reasons, package values): it goes into the page with textContent or
// setAttribute only, never as markup.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

// el("td", {class: "x"}, "text", child...) -> an element; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function bar(label, value, total, text, kind) {
  const share = total > 0 ? Math.min(1, value / total) : 0;
  const fill = el("span", {class: "fill " + kind});
  fill.style.width = (share * 100).toFixed(1) + "%";
  return el("div", {class: "bar-row"},
    el("span", {class: "bar-label"}, label),
    el("span", {class: "bar", role: "img", "aria-label": label + ": " + text}, fill),
    el("span", {class: "bar-text"}, text));
}

function nodeBox(n) {
  const box = el("li", {class: "node " + n.health, "data-node": n.name,
                        "data-health": n.health, "data-state": n.state});
  const healthText = n.health === "down" ? "down (serfHealth " + n.serf_health + ")" : n.health;
  box.append(
    el("p", {class: "node-name"}, n.name),
    el("p", {class: "node-health"}, healthText + (n.state !== n.health ? " · " + n.state : "")),
    el("p", {class: "node-address"}, n.address),
    bar("CPU reserved", n.reserved_cpu, n.cpu, n.reserved_cpu + " of " + n.cpu + " cores", "cpu"),
    bar("Memory reserved", n.reserved_memory, n.memory,
        bytes(n.reserved_memory) + " of " + bytes(n.memory), "mem"));
  if (n.used_memory !== null) {
    box.append(bar("Memory used", n.used_memory, n.memory,
                   bytes(n.used_memory) + " of " + bytes(n.memory), "used"));
  }
  for (const problem of n.problems) box.append(el("p", {class: "problem"}, problem));
  const list = el("ul", {class: "chips", "aria-label": "instances on " + n.name});
  for (const i of n.instances) {
    list.append(el("li", {class: "chip " + i.health, title: i.instance},
                   i.instance + " " + i.state + (i.health !== "-" ? " " + i.health : "")));
  }
  box.append(list);
  return box;
}

function drawPool(pool) {
  const root = $("pool");
  const parts = [];
  for (const zone of pool) {
    const zoneBox = el("section", {class: "zone"},
                       el("h3", {}, zone.zone ? "Zone " + zone.zone : "No zone set"));
    for (const rack of zone.racks) {
      const nodes = el("ul", {class: "nodes"});
      for (const n of rack.nodes) nodes.append(nodeBox(n));
      zoneBox.append(el("div", {class: "rack"},
                        el("h4", {}, rack.rack ? "Rack " + rack.rack : "No rack set"), nodes));
    }
    parts.push(zoneBox);
  }
  if (!parts.length) parts.push(el("p", {}, "No nodes in Consul's catalog."));
  root.replaceChildren(...parts);
  root.setAttribute("aria-busy", "false");
}

function fillBody(table, rows, empty) {
  const body = $(table).tBodies[0];
  const columns = $(table).tHead.rows[0].cells.length;
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", {colspan: columns, class: "empty"}, empty)));
    return;
  }
  body.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c, i) =>
    i === 0 ? el("th", {scope: "row"}, c) : el("td", {}, c ?? "-")))));
}

function drawJobs(jobs, unreadable) {
  fillBody("jobs", jobs.map((j) => [j.job, j.kind, j.count, j.running, j.pending, j.failed,
                                    j.version]), "No jobs.");
  const instances = [];
  for (const j of jobs) {
    for (const i of j.instances) {
      instances.push([i.instance, j.job, i.node, i.ports || "-", i.state, i.health, i.reason]);
    }
  }
  fillBody("instances", instances, "No instances.");
  const box = $("unreadable");
  if (!unreadable.length) { box.replaceChildren(); return; }
  const table = el("table", {},
    el("caption", {}, "Unreadable records: the scheduler skips them and leaves what they name alone"),
    el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "Key"), el("th", {scope: "col"}, "Reason"))),
    el("tbody", {}, ...unreadable.map((u) => el("tr", {}, el("th", {scope: "row"}, u.key),
                                                el("td", {}, u.reason)))));
  box.replaceChildren(el("h3", {}, "Unreadable records"), table);
}

function drawPackages(packages, problem) {
  const kv = (o) => Object.entries(o).map(([k, v]) => k + "=" + v).join(", ");
  fillBody("packages", packages.map((p) => [p.name, p.version, p.jobs.join(", "),
                                            kv(p.dependencies), kv(p.values)]),
           problem || "No packages installed.");
}

// Keep a select's options in step with `values` without losing what the user picked.
function syncSelect(select, values) {
  const current = Array.from(select.options, (o) => o.value);
  if (current.length === values.length && current.every((v, i) => v === values[i])) return;
  const picked = select.value;
  select.replaceChildren(...values.map((v) => el("option", {value: v}, v)));
  if (values.includes(picked)) select.value = picked;
}

let catalog = [];

function syncVersions() {
  const pkg = catalog.find((p) => p.name === $("install-name").value);
  syncSelect($("install-version"), pkg ? pkg.versions : []);
}

function drawEvents(events) {
  fillBody("events", events.map((e) => [e.time, e.job, e.slot, e.node, e.event, e.message]),
           "No events yet.");
}

function draw(state) {
  drawPool(state.pool);
  drawJobs(state.jobs, state.unreadable);
  drawPackages(state.packages, state.packages_error);
  const jobNames = state.jobs.map((j) => j.job);
  for (const id of ["scale-job", "stop-job", "explain-job"]) syncSelect($(id), jobNames);
  const nodes = state.pool.flatMap((z) => z.racks.flatMap((r) => r.nodes.map((n) => n.name)));
  syncSelect($("drain-node"), nodes);
  catalog = state.catalog;
  syncSelect($("install-name"), catalog.map((p) => p.name));
  syncVersions();
  $("usage-note").textContent = state.usage_note;
  drawEvents(state.events);
  const all = state.pool.flatMap((z) => z.racks.flatMap((r) => r.nodes));
  const count = (h) => all.filter((n) => n.health === h).length;
  // the live region changes only when this summary does, not at every poll
  const summary = all.length + " nodes: " + count("passing") + " passing, " + count("warning") +
    " warning, " + count("critical") + " critical, " + count("down") + " down; " +
    state.jobs.length + " jobs";
  if ($("summary").textContent !== summary) $("summary").textContent = summary;
  $("connection").textContent = "Consul " + state.consul + ", updated " +
    new Date().toLocaleTimeString();
  $("connection").className = "connection ok";
}

async function poll() {
  try {
    const reply = await fetch("/api/state", {cache: "no-store"});
    const doc = await reply.json();
    if (!reply.ok) throw new Error(doc.error || reply.statusText);
    draw(doc);
  } catch (err) {
    $("connection").textContent = "Not updated: " + err.message;
    $("connection").className = "connection failing";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function act(action, body) {
  const out = $("action-result");
  out.className = "result";
  out.textContent = action + ": sending…";
  try {
    const reply = await fetch("/api/action/" + action, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Walle-Console": "1",
                "X-Consul-Token": $("token").value},
      body: JSON.stringify(body),
    });
    const doc = await reply.json();
    out.textContent = reply.ok ? doc.message : action + " refused (" + reply.status + "): " + doc.error;
    out.className = "result " + (reply.ok ? "done" : "refused");
  } catch (err) {
    out.textContent = action + " failed: " + err.message;
    out.className = "result refused";
  }
}

async function explainJob(job) {
  const box = $("explanation");
  const reply = await fetch("/api/explain?job=" + encodeURIComponent(job), {cache: "no-store"});
  const exp = await reply.json();
  if (!reply.ok) { box.replaceChildren(el("p", {class: "refused"}, exp.error)); return; }
  const feasible = exp.verdicts.filter((v) => v.reasons.length === 0).length;
  const head = el("p", {}, "Job " + exp.job + " (" + exp.strategy + "): " + feasible + " of " +
    exp.verdicts.length + " nodes feasible; " + (exp.chosen ? "best " + exp.chosen : "nothing fits") +
    (exp.summary ? ". Rejected: " + exp.summary : "") +
    (exp.evictions.length ? ". Preemption would evict: " + exp.evictions.join(", ") : ""));
  const columns = ["Node", "State", "Total", ...exp.scorers, "Rejected because"];
  const rows = exp.verdicts.map((v) => el("tr", {},
    el("th", {scope: "row"}, v.node), el("td", {}, v.state),
    el("td", {}, v.total === null ? "-" : v.total.toFixed(1)),
    ...exp.scorers.map((s) => {
      const score = v.scores.find(([name]) => name === s);
      return el("td", {}, score ? score[1].toFixed(1) : "-");
    }),
    el("td", {}, v.reasons.join("; ") || "-")));
  box.replaceChildren(head, el("table", {},
    el("caption", {}, "Where the next instance of " + exp.job + " would go, and why"),
    el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", {scope: "col"}, c)))),
    el("tbody", {}, ...rows)));
}

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (event) => { event.preventDefault(); handler(); });
}

document.addEventListener("DOMContentLoaded", () => {
  onSubmit("token-form", () => {});
  onSubmit("scale-form", () => act("scale", {job: $("scale-job").value,
                                             count: Number($("scale-count").value)}));
  onSubmit("stop-form", () => act("stop", {job: $("stop-job").value}));
  onSubmit("drain-form", () => act("drain", {node: $("drain-node").value,
                                             undo: $("drain-undo").checked}));
  onSubmit("install-form", () => act("install", {
    name: $("install-name").value, version: $("install-version").value || null,
    values: $("install-values").value.split("\n").map((l) => l.trim()).filter((l) => l)}));
  onSubmit("explain-form", () => explainJob($("explain-job").value));
  $("install-name").addEventListener("change", syncVersions);
  poll();
});
