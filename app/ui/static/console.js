// Exposr Trainer console: live job progress, keyboard review, drag-and-drop upload.
// Plain browser JavaScript, no build step. Data is only ever written with textContent.
"use strict";

const csrfToken = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function setCounts(counts) {
  if (!counts) return;
  for (const [key, value] of Object.entries(counts)) {
    document.querySelectorAll(`[data-count="${key}"]`).forEach((node) => { node.textContent = value; });
  }
}

// ---- one job's page: followed until it ends, then shown with its result ----------------------------
function followJob(table) {
  if (!["queued", "running"].includes(table.dataset.state)) return;
  const tick = async () => {
    try {
      const response = await fetch(table.dataset.poll, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/ui/login"); return; }
      if (response.ok) {
        const job = await response.json();
        document.getElementById("job-state").textContent = job.state;
        const box = document.getElementById("job-progress");
        if (box) {
          box.querySelector(".stage").textContent = job.stage;
          const bar = box.querySelector("progress");
          if (job.percent !== null) bar.value = job.percent;
          box.querySelector(".percent").textContent = job.percent !== null ? `${job.percent}%` : "";
          box.querySelector(".rate").textContent = job.rate || "";
          box.querySelector(".eta").textContent = job.eta ? `ETA ${job.eta}` : "";
          box.querySelector(".detail").textContent = job.detail;
        }
        if (!["queued", "running"].includes(job.state)) { window.location.reload(); return; }
      }
    } catch (err) { /* the next tick retries */ }
    window.setTimeout(tick, 1500);
  };
  window.setTimeout(tick, 1000);
}

// ---- times: "3 min ago", the full time in the viewer's zone on hover --------------------------------
function humanTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return { relative: iso, full: iso };
  const full = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  }).format(when);
  const seconds = Math.round((Date.now() - when.getTime()) / 1000);
  const ago = Math.abs(seconds);
  const units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const [unit, size] = units.find(([, n]) => ago >= n) || ["second", 1];
  const relative = ago < 10 ? "just now" : new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }).format(-Math.round(seconds / size), unit);
  return { relative, full };
}

function renderTimes(root) {
  (root || document).querySelectorAll("time[datetime]").forEach((node) => {
    const { relative, full } = humanTime(node.getAttribute("datetime"));
    node.textContent = relative;
    node.title = full;
  });
}

// ---- keys: an element with data-key="c" is clicked by that key (listed on its page) -------------
function setupKeys() {
  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    if (event.ctrlKey || event.metaKey || event.altKey || event.key.length !== 1) return;
    const target = document.querySelector(`[data-key="${CSS.escape(event.key.toLowerCase())}"]`);
    if (target) { event.preventDefault(); target.click(); }
  });
}

// ---- overview: running jobs, polled -------------------------------------------------------------
function renderJobs(jobs) {
  const list = document.getElementById("running-list");
  list.replaceChildren(...jobs.map((job) => {
    const item = el("li");
    item.dataset.job = job.id;
    const link = el("a");
    link.href = `/ui/jobs/${encodeURIComponent(job.id)}`;
    link.append(el("strong", null, job.kind));
    item.append(link, " ", el("span", "stage", job.stage), " ");
    const bar = el("progress");
    bar.max = 100;
    if (job.percent !== null) bar.value = job.percent;
    item.append(bar, " ", el("span", "percent", job.percent !== null ? `${job.percent}%` : ""), " ",
      el("span", "rate", job.rate || ""), " ", el("span", "eta", job.eta ? `ETA ${job.eta}` : ""), " ",
      el("span", "detail", job.detail));
    return item;
  }));
  document.getElementById("no-running").hidden = jobs.length > 0;
}

function pollJobs(url) {
  const tick = async () => {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.status === 401) { window.location.assign("/ui/login"); return; }
      if (response.ok) {
        const body = await response.json();
        renderJobs(body.jobs);
        setCounts(body.counts);
      }
    } catch (err) { /* the next tick retries */ }
    window.setTimeout(tick, 2000);
  };
  window.setTimeout(tick, 1000);
}

// ---- review: pages, filters in the URL, viewer, undo, bulk, skips kept for the session ----------
function reviewMessage(text) {
  const box = document.getElementById("review-message");
  box.textContent = text;
  box.hidden = !text;
}

const stored = (key) => { try { return JSON.parse(sessionStorage.getItem(key) || "[]"); } catch (err) { return []; } };
const store = (key, value) => { try { sessionStorage.setItem(key, JSON.stringify(value)); } catch (err) { /* full */ } };

async function postJson(url, body) {
  let response, answer;
  try {
    response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    });
    answer = await response.json().catch(() => ({ detail: `error ${response.status}` }));
  } catch (err) {
    return { ok: false, status: 0, body: { detail: `not sent: ${err}` } };
  }
  if (response.status === 401) { window.location.assign("/ui/login"); }
  return { ok: response.ok || response.status === 207, status: response.status, body: answer };
}

function setupReview(grid) {
  const skipped = new Set(stored("exposr-skipped"));
  const selected = new Set();
  const undoStack = stored("exposr-undo");
  let current = 0;
  let anchor = null;
  const all = () => Array.from(grid.querySelectorAll("article.item"));
  const open = () => all().filter((n) => !n.classList.contains("done") && !n.classList.contains("pending")
    && !n.classList.contains("skipped"));
  const byId = (id) => grid.querySelector(`article.item[data-id="${CSS.escape(id)}"]`);
  const undoButton = document.getElementById("undo");
  const queue = document.querySelector('[data-count="queue"]');

  function refreshBars() {
    undoButton.disabled = undoStack.length === 0;
    undoButton.textContent = undoStack.length ? `undo (u): ${undoStack[undoStack.length - 1].ids.length} label(s)` : "undo (u)";
    document.getElementById("selection").hidden = selected.size === 0;
    document.getElementById("selected-count").textContent = selected.size;
    const onPage = all().filter((n) => n.classList.contains("skipped")).length;
    document.getElementById("skipped-note").hidden = onPage === 0;
    document.getElementById("skipped-count").textContent = onPage;
  }
  function select(index) {
    const items = open();
    if (!items.length) return;
    current = Math.max(0, Math.min(index, items.length - 1));
    all().forEach((node) => node.classList.remove("current"));
    items[current].classList.add("current");
    items[current].focus({ preventScroll: false });
  }
  function toggle(item, on) {
    const id = item.dataset.id;
    const want = on === undefined ? !selected.has(id) : on;
    if (want) selected.add(id); else selected.delete(id);
    item.classList.toggle("picked", want);
    refreshBars();
  }
  function clearSelection() {
    selected.clear();
    all().forEach((n) => n.classList.remove("picked"));
    refreshBars();
  }
  function markDone(id, label) {
    const item = byId(id);
    if (!item) return;
    item.classList.remove("pending", "picked");
    item.classList.add("done");
    item.querySelector(".label").textContent = label;
  }
  function markOpen(id, label) {
    const item = byId(id);
    if (!item) return;
    item.classList.remove("done", "pending");
    item.querySelector(".label").textContent = label;
  }
  const adjustQueue = (delta) => {
    if (queue) queue.textContent = Math.max(0, Number(queue.textContent.replace(/,/g, "")) + delta).toLocaleString("en");
  };

  async function label(ids, value) {
    ids = ids.filter((id) => { const n = byId(id); return !n || !n.classList.contains("pending"); });
    if (!ids.length) return;
    ids.forEach((id) => { const n = byId(id); if (n) n.classList.add("pending"); });
    select(current);
    const result = ids.length === 1
      ? await postJson("/ui/api/label", { id: ids[0], label: value })
      : await postJson("/ui/api/labels", { ids, label: value });
    ids.forEach((id) => { const n = byId(id); if (n) n.classList.remove("pending"); });
    const body = result.body;
    const results = body.results || (result.ok ? [{ id: body.id, ok: true, label: body.label }] : []);
    const done = results.filter((r) => r.ok);
    const wasOpen = done.filter((r) => { const n = byId(r.id); return n && !n.classList.contains("done"); }).length;
    done.forEach((r) => { markDone(r.id, r.label); selected.delete(r.id); });
    if (done.length) {
      undoStack.push({ ids: done.map((r) => r.id) });
      store("exposr-undo", undoStack.slice(-50));
      adjustQueue(-wasOpen);
    }
    setCounts(body.counts);
    refreshBars();
    reviewMessage(body.detail ? body.detail : `${done.length === 1 ? done[0].id : done.length + " images"} labelled ${value}`);
    select(current);
  }
  async function undo() {
    const last = undoStack.pop();
    if (!last) { reviewMessage("nothing to undo in this session"); return; }
    store("exposr-undo", undoStack);
    const result = await postJson("/ui/api/undo", { ids: last.ids });
    const results = result.body.results || [];
    const back = results.filter((r) => r.ok);
    back.forEach((r) => markOpen(r.id, r.label));
    adjustQueue(back.length);
    setCounts(result.body.counts);
    refreshBars();
    reviewMessage(result.body.detail || `undone: ${back.length === 1 ? back[0].id : back.length + " images"} back to ${back.map((r) => r.label).filter((v, i, a) => a.indexOf(v) === i).join(", ")}`);
    if (back.length) { const item = byId(back[0].id); if (item) select(open().indexOf(item)); }
  }
  function skip(item) {
    if (!item) return;
    skipped.add(item.dataset.id);
    store("exposr-skipped", Array.from(skipped).slice(-2000));
    item.classList.add("skipped");
    refreshBars();
    select(current);
  }
  const targets = (item) => (selected.size ? Array.from(selected) : item ? [item.dataset.id] : []);

  // ---- the viewer
  const viewer = document.getElementById("viewer");
  let viewing = null;
  function fact(name, value) {
    const row = el("tr");
    row.append(el("th", null, name), el("td", null, value === null || value === undefined || value === "" ? "–" : String(value)));
    return row;
  }
  async function show(id) {
    viewing = id;
    const image = document.getElementById("viewer-image");
    image.src = `/ui/images/${encodeURIComponent(id)}/file`;
    image.alt = `image ${id}`;
    document.getElementById("viewer-caption").textContent = id;
    const facts = document.querySelector("#viewer-facts tbody");
    facts.replaceChildren(fact("loading", "…"));
    const near = document.getElementById("viewer-near");
    near.replaceChildren();
    if (!viewer.open) viewer.showModal();
    let response;
    try { response = await fetch(`/ui/api/images/${encodeURIComponent(id)}`, { credentials: "same-origin", headers: { Accept: "application/json" } }); }
    catch (err) { facts.replaceChildren(fact("error", String(err))); return; }
    const d = await response.json().catch(() => ({ detail: `error ${response.status}` }));
    if (!response.ok) { facts.replaceChildren(fact("error", d.detail)); return; }
    const att = d.attribution || {};
    const rows = [
      fact("label", d.label), fact("labelled by", d.label_source ? [d.label_source.kind, d.label_source.by, d.label_source.at].filter(Boolean).join(" · ") : null),
      fact("P(ai)", typeof d.score === "number" ? d.score.toFixed(3) : null),
      fact("scorer", d.scored_by ? Object.entries(d.scored_by).filter(([k]) => k !== "at").map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") : null),
      fact("source", d.source), fact("generator", d.generator), fact("stored", d.timestamp ? humanTime(d.timestamp).full : null),
      fact("size", d.width && d.height ? `${d.width}×${d.height} ${d.format || ""}` : null), fact("split side", d.split),
    ];
    for (const [k, v] of Object.entries(att)) rows.push(fact(k, v));
    if (d.attribution_url) {
      const row = el("tr"); const cell = el("td"); const link = el("a", null, d.attribution_url);
      link.href = d.attribution_url; link.rel = "noopener noreferrer"; link.target = "_blank";
      cell.append(link); row.append(el("th", null, "link"), cell); rows.push(row);
    }
    facts.replaceChildren(...rows);
    document.getElementById("viewer-near-title").hidden = !d.near_duplicates.length;
    near.replaceChildren(...d.near_duplicates.map((n) => {
      const box = el("figure", "near");
      const img = el("img"); img.src = `/ui/thumbs/${encodeURIComponent(n.id)}`; img.alt = `near duplicate ${n.id}`;
      const link = el("a"); link.href = `/ui/images/${encodeURIComponent(n.id)}/file`; link.dataset.open = n.id; link.append(img);
      box.append(link, el("figcaption", null, `${n.label} · ${n.distance} bits apart`));
      link.addEventListener("click", (event) => { event.preventDefault(); show(n.id); });
      return box;
    }));
  }
  function closeViewer() { if (viewer.open) viewer.close(); viewing = null; }
  document.getElementById("viewer-close").addEventListener("click", closeViewer);
  document.getElementById("viewer-real").addEventListener("click", () => viewing && label([viewing], "real").then(() => show(viewing)));
  document.getElementById("viewer-ai").addEventListener("click", () => viewing && label([viewing], "ai").then(() => show(viewing)));
  viewer.addEventListener("close", () => { viewing = null; });

  all().forEach((item) => {
    if (skipped.has(item.dataset.id)) item.classList.add("skipped");
    item.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = event.submitter ? event.submitter.value : "";
      select(open().indexOf(item));
      label(selected.size && selected.has(item.dataset.id) ? Array.from(selected) : [item.dataset.id], value);
    });
    item.querySelector("button.skip").addEventListener("click", () => { select(open().indexOf(item)); skip(item); });
    item.querySelector("a.open").addEventListener("click", (event) => {
      event.preventDefault();
      if (event.shiftKey) return;
      show(item.dataset.id);
    });
    item.addEventListener("click", (event) => {
      if (event.target.closest("button, a:not(.open), input")) return;
      const items = all();
      if (event.shiftKey && anchor !== null) {
        event.preventDefault();
        const [a, b] = [items.indexOf(anchor), items.indexOf(item)].sort((x, y) => x - y);
        items.slice(a, b + 1).forEach((n) => { if (!n.classList.contains("done")) toggle(n, true); });
        return;
      }
      anchor = item;
      const index = open().indexOf(item);
      if (index >= 0) select(index);
    });
  });
  undoButton.addEventListener("click", undo);
  document.getElementById("clear-selection").addEventListener("click", clearSelection);
  document.getElementById("unskip").addEventListener("click", () => {
    all().forEach((n) => { n.classList.remove("skipped"); skipped.delete(n.dataset.id); });
    store("exposr-skipped", Array.from(skipped));
    refreshBars();
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const items = open();
    const item = items[current];
    if (viewer.open) {
      if (key === "r" || key === "a") { event.preventDefault(); label([viewing], key === "r" ? "real" : "ai").then(() => viewing && show(viewing)); }
      else if (key === "u") { event.preventDefault(); undo().then(() => viewing && show(viewing)); }
      return;  // Esc closes the dialog by itself
    }
    const actions = {
      r: () => label(targets(item), "real"),
      a: () => label(targets(item), "ai"),
      s: () => skip(item),
      ArrowRight: () => select(current + 1),
      ArrowLeft: () => select(current - 1),
      Enter: () => item && show(item.dataset.id),
      x: () => item && toggle(item),
      u: () => undo(),
      Escape: () => clearSelection(),
      n: () => { const next = document.getElementById("next-page"); if (next) next.click(); },
      p: () => { const prev = document.getElementById("prev-page"); if (prev) prev.click(); },
      f: () => document.getElementById("f-kind").focus(),
    };
    if (actions[key]) { event.preventDefault(); actions[key](); }
  });
  refreshBars();
  select(0);
}

// ---- upload: drag and drop, one request per file ---------------------------------------------------
function setupUpload(form) {
  const outcomes = document.getElementById("outcomes");
  const input = document.getElementById("files");
  const zone = document.getElementById("dropzone");
  document.getElementById("choose").addEventListener("click", () => input.click());

  async function send(file) {
    const row = el("li", "outcome-pending");
    const status = el("span", "status", "uploading…");
    row.append(el("span", "file", file.name), ": ", status);
    outcomes.append(row);
    const data = new FormData();
    data.append("label", document.getElementById("upload-label").value);
    const generator = document.getElementById("upload-generator").value.trim();
    if (generator) data.append("generator", generator);
    data.append("files", file, file.name);
    try {
      const response = await fetch("/ui/upload", {
        method: "POST", body: data, credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
      });
      const body = await response.json();
      const result = body.results ? body.results[0] : { status: "rejected", message: body.detail };
      row.className = `outcome-${result.status}`;
      status.textContent = result.status;
      if (result.reason) row.append(" ", el("span", "reason", result.reason));
      if (result.message) row.append(" — ", el("span", "why", result.message));
      if ((result.status === "duplicate" || result.status === "near_duplicate") && result.id) {
        const link = el("a", "match");
        link.href = `/ui/images/${encodeURIComponent(result.id)}/file`;
        const thumb = el("img");
        thumb.src = `/ui/thumbs/${encodeURIComponent(result.id)}`;
        thumb.alt = `the stored image ${result.id}`;
        thumb.width = 64;
        thumb.height = 48;
        link.append(" ", thumb, " the stored image");
        row.append(" ", link);
      }
    } catch (err) {
      row.className = "outcome-error";
      status.textContent = "error";
      row.append(" — ", el("span", "why", String(err)));
    }
  }

  const sendAll = (files) => Array.from(files).reduce((done, file) => done.then(() => send(file)),
    Promise.resolve());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendAll(input.files).then(() => { input.value = ""; });
  });
  input.addEventListener("change", () => sendAll(input.files).then(() => { input.value = ""; }));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    sendAll(event.dataTransfer.files);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  renderTimes();
  window.setInterval(() => renderTimes(), 30000);
  const running = document.getElementById("running");
  if (running) pollJobs(running.dataset.poll);
  const grid = document.getElementById("review-grid");
  if (grid) setupReview(grid); else setupKeys();
  const upload = document.getElementById("upload-form");
  if (upload) setupUpload(upload);
  const job = document.getElementById("job");
  if (job && job.dataset.poll) followJob(job);
});
