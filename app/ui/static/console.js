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

// ---- overview: running jobs, polled -------------------------------------------------------------
function renderJobs(jobs) {
  const list = document.getElementById("running-list");
  list.replaceChildren(...jobs.map((job) => {
    const item = el("li");
    item.dataset.job = job.id;
    item.append(el("strong", null, job.kind), " ", el("span", "stage", job.stage), " ");
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

// ---- review: click or key -------------------------------------------------------------------------
function reviewMessage(text) {
  const box = document.getElementById("review-message");
  box.textContent = text;
  box.hidden = !text;
}

function setupReview(grid) {
  // Items still to label; one whose label is on its way is skipped, so fast keys never label twice.
  const items = () => Array.from(grid.querySelectorAll("article.item:not(.done):not(.pending)"));
  let current = 0;
  const select = (index) => {
    const all = items();
    if (!all.length) return;
    current = Math.max(0, Math.min(index, all.length - 1));
    all.forEach((node, i) => node.classList.toggle("selected", i === current));
    all[current].focus({ preventScroll: false });
  };
  const queue = document.querySelector('[data-count="queue"]');

  async function label(item, value) {
    if (item.classList.contains("pending") || item.classList.contains("done")) return;
    item.classList.add("pending");
    select(current);
    let response, body;
    try {
      response = await fetch("/ui/api/label", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify({ id: item.dataset.id, label: value }),
      });
      body = await response.json().catch(() => ({ detail: `error ${response.status}` }));
    } catch (err) {
      response = { ok: false }; body = { detail: `not sent: ${err}` };
    }
    item.classList.remove("pending");
    if (response.status === 401) { window.location.assign("/ui/login"); return; }
    if (!response.ok) { reviewMessage(body.detail || "error"); select(current); return; }
    item.classList.add("done");
    item.querySelector(".label").textContent = body.label;
    setCounts(body.counts);
    if (queue) queue.textContent = Math.max(0, Number(queue.textContent) - 1);
    reviewMessage(`${body.id} labelled ${body.label}`);
  }

  grid.querySelectorAll("article.item").forEach((item) => {
    item.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = event.submitter ? event.submitter.value : "";
      select(items().indexOf(item));
      label(item, value);
    });
    item.querySelector("button.skip").addEventListener("click", () => select(items().indexOf(item) + 1));
    item.addEventListener("click", () => select(items().indexOf(item)));
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const all = items();
    if (!all.length) return;
    const item = all[current];
    const key = event.key.toLowerCase();
    if (key === "r") { event.preventDefault(); label(item, "real"); }
    else if (key === "a") { event.preventDefault(); label(item, "ai"); }
    else if (key === "s" || event.key === "ArrowRight") { event.preventDefault(); select(current + 1); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); select(current - 1); }
  });
  select(0);
}

// ---- upload: drag and drop, one request per file ---------------------------------------------------
function setupUpload(form) {
  const outcomes = document.getElementById("outcomes");
  const input = document.getElementById("files");
  const zone = document.getElementById("dropzone");

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
  const running = document.getElementById("running");
  if (running) pollJobs(running.dataset.poll);
  const grid = document.getElementById("review-grid");
  if (grid) setupReview(grid);
  const upload = document.getElementById("upload-form");
  if (upload) setupUpload(upload);
});
