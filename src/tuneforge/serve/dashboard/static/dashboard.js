// tuneforge dashboard: the pages' behaviour. Calls the service's JSON API with the session cookie.
"use strict";

async function tfApi(method, url, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const err = (data && data.error) || {};
    throw new Error(err.message || (data && data.detail) || `${r.status} ${r.statusText}`);
  }
  return data;
}

function tfEsc(s) { return String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

// ---- runs table: filter by text and status
function tfTableFilter() {
  const text = document.getElementById("filter-text"), status = document.getElementById("filter-status");
  const apply = () => {
    const q = text.value.toLowerCase(), st = status.value;
    for (const tr of document.querySelectorAll("#runs tbody tr")) {
      const ok = (!q || tr.textContent.toLowerCase().includes(q)) && (!st || tr.dataset.status === st);
      tr.style.display = ok ? "" : "none";
    }
  };
  text.addEventListener("input", apply); status.addEventListener("change", apply);
}

// ---- a run page: curves and status from the server-sent events stream
function tfFollowRun(runId, metric) {
  const loss = new TFChart(document.getElementById("chart-loss"), { title: "Loss" });
  const val = new TFChart(document.getElementById("chart-metric"), { title: "Validation " + metric });
  const extra = document.getElementById("chart-extra") && new TFChart(document.getElementById("chart-extra"), { title: "Learning rate" });
  const add = rec => {
    if (rec.split === "train") {
      loss.add("training loss", rec.step, rec.loss);
      if (extra) extra.add("lr", rec.step, rec.lr, { color: "#8172b3" });
    } else if (rec.split === "validation") {
      loss.add("validation loss", rec.step, rec.loss, { color: "#dd8452", dots: true });
      if (metric !== "loss") val.add("validation " + metric, rec.step, rec[metric], { color: "#55a868", dots: true });
      else for (const k of ["accuracy", "perplexity", "macro_f1", "reward"]) if (k in rec) val.add("validation " + k, rec.step, rec[k], { dots: true });
    }
  };
  const setStatus = row => {
    const set = (id, v) => { const el = document.getElementById(id); if (el) el.textContent = v; };
    const badge = document.getElementById("run-status");
    if (badge) { badge.textContent = row.status; badge.className = "badge " + row.status; }
    set("run-step", row.total_steps ? `${row.step} / ${row.total_steps}` : String(row.step));
    set("run-what", `${row.task} · ${row.model} · ${row.method}`);
    set("run-eta", row.eta); set("run-best", row.best); set("run-duration", row.duration);
    const bar = document.getElementById("run-bar");
    if (bar && row.progress !== null) bar.style.width = (100 * row.progress).toFixed(1) + "%";
    document.body.dataset.runStatus = row.status;
  };
  const es = new EventSource(`/runs/${encodeURIComponent(runId)}/stream`);
  const initial = document.body.dataset.runStatus;
  es.addEventListener("metrics", e => { for (const rec of JSON.parse(e.data)) add(rec); });
  es.addEventListener("reset", () => { loss.clear(); val.clear(); if (extra) extra.clear(); });
  es.addEventListener("status", e => setStatus(JSON.parse(e.data)));
  es.addEventListener("done", e => {
    es.close();
    const st = JSON.parse(e.data).status;
    document.body.dataset.streamDone = st;
    if (st !== initial) setTimeout(() => location.reload(), 800); // the report, the final events
  });
  return { loss, val, es };
}

async function tfJobAction(jobId, action) {
  const out = document.getElementById("job-action-result");
  try {
    const job = await tfApi("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/${action}`);
    out.textContent = `${action}: the job is now ${job.status}`;
    out.className = "ok";
    setTimeout(() => location.reload(), 700);
  } catch (e) { out.textContent = `${action} failed: ${e.message}`; out.className = "error"; }
}

async function tfJobEvents(jobId) {
  const box = document.getElementById("job-events");
  if (!box) return;
  try {
    const page = await tfApi("GET", `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=100`);
    const rows = (page.data || []).filter(e => e.type !== "metrics").map(e =>
      `<tr><td class="muted">${new Date(e.created_at * 1000).toLocaleTimeString()}</td><td>${tfEsc(e.level || "")}</td><td>${tfEsc(e.message)}</td></tr>`);
    box.innerHTML = rows.length ? `<table><tbody>${rows.join("")}</tbody></table>` : '<p class="muted">no events yet</p>';
  } catch (e) { box.innerHTML = `<p class="muted">events unavailable: ${tfEsc(e.message)}</p>`; }
}

// ---- start a job: upload, audit, options, submit
async function tfUpload(ev) {
  ev.preventDefault();
  const input = document.getElementById("upload-file"), out = document.getElementById("upload-result");
  if (!input.files.length) { out.innerHTML = '<p class="error">choose a file first</p>'; return; }
  const fd = new FormData();
  fd.append("purpose", "fine-tune");
  fd.append("file", input.files[0]);
  out.innerHTML = '<p class="muted">uploading and auditing ...</p>';
  let file;
  try { file = await tfApi("POST", "/v1/files", fd); }
  catch (e) { out.innerHTML = `<div class="error" id="upload-error">${tfEsc(e.message)}</div>`; return; }
  const r = await fetch(`/data/${encodeURIComponent(file.id)}?fragment=1`, { credentials: "same-origin" });
  out.innerHTML = r.ok ? await r.text() : `<p>${tfEsc(file.id)}: ${tfEsc(file.status)}</p>`;
  if (file.status !== "error") {
    const sel = document.getElementById("training-file");
    const opt = new Option(`${file.filename} (${file.id})`, file.id, true, true);
    sel.add(opt);
  }
}

async function tfCollectJob() {
  const f = id => document.getElementById(id).value.trim();
  const auto = v => (v === "" || v === "auto") ? "auto" : Number(v);
  const body = { model: f("job-model"), training_file: f("training-file") };
  if (f("validation-file")) body.validation_file = f("validation-file");
  if (f("job-suffix")) body.suffix = f("job-suffix");
  const type = f("job-type");
  const hp = { n_epochs: auto(f("hp-epochs")), batch_size: auto(f("hp-batch")), learning_rate_multiplier: auto(f("hp-lr")) };
  if (type === "dpo") hp.beta = auto(f("hp-beta"));
  body.method = { type, [type]: { hyperparameters: hp } };
  let opts = {};
  const tfMethod = f("tf-method"); if (tfMethod) opts["method.name"] = tfMethod;
  const yaml = document.getElementById("job-yaml").value;
  if (yaml.trim()) {  // the pasted config's keys come last, so they win
    const r = await fetch("/dashboard/parse-yaml", { method: "POST", credentials: "same-origin", body: yaml });
    const d = await r.json();
    if (!r.ok) throw new Error(d.error.message);
    opts = { ...opts, ...d.options };
  }
  const field = document.getElementById("job-form").dataset.optionsField;
  if (Object.keys(opts).length) body[field] = opts;
  return body;
}

async function tfSubmitJob(ev) {
  ev.preventDefault();
  const out = document.getElementById("submit-result");
  let body;
  try { body = await tfCollectJob(); }
  catch (e) { out.innerHTML = `<div class="error">${tfEsc(e.message)}</div>`; return; }
  if (!body.training_file) { out.innerHTML = '<p class="error">upload or pick a training file first</p>'; return; }
  try {
    const job = await tfApi("POST", "/v1/fine_tuning/jobs", body);
    out.innerHTML = `<p class="ok" id="submitted">job <a href="/runs/${encodeURIComponent(job.id)}">${tfEsc(job.id)}</a> is ${tfEsc(job.status)}</p>
      <button class="danger" id="cancel-new-job" onclick="tfJobAction('${tfEsc(job.id)}', 'cancel')">Cancel it</button>
      <span id="job-action-result"></span>`;
    document.body.dataset.jobId = job.id;
  } catch (e) { out.innerHTML = `<div class="error">${tfEsc(e.message)}</div>`; }
}

// ---- playground: the same prompt to two models, streamed
function tfPlayground() {
  const history = { left: [], right: [] };
  const render = side => {
    const box = document.getElementById(`messages-${side}`);
    box.innerHTML = history[side].map(m => `<div class="msg ${m.role}">${tfEsc(m.content)}</div>`).join("");
    box.scrollTop = box.scrollHeight;
  };
  async function ask(side, prompt) {
    const model = document.getElementById(`model-${side}`).value;
    history[side].push({ role: "user", content: prompt });
    const answer = { role: "assistant", content: "" };
    const msgs = history[side].slice();
    history[side].push(answer);
    render(side);
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, messages: msgs, stream: true, max_tokens: Number(document.getElementById("max-tokens").value) || 128,
          temperature: Number(document.getElementById("temperature").value) }),
      });
      if (!r.ok) { const d = await r.json().catch(() => ({})); throw new Error((d.error && d.error.message) || r.statusText); }
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          for (const line of chunk.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const delta = JSON.parse(data).choices?.[0]?.delta?.content;
            if (delta) { answer.content += delta; render(side); }
          }
        }
      }
    } catch (e) { answer.content = `[error: ${e.message}]`; render(side); }
  }
  document.getElementById("chat-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const input = document.getElementById("prompt"), prompt = input.value.trim();
    if (!prompt) return;
    input.value = "";
    ask("left", prompt); ask("right", prompt);
  });
  document.getElementById("chat-clear").addEventListener("click", () => { history.left = []; history.right = []; render("left"); render("right"); });
}

// ---- compare: overlaid live curves of the chosen runs
async function tfCompareCurves(ids) {
  const loss = new TFChart(document.getElementById("cmp-loss"), { title: "Validation loss" });
  const train = new TFChart(document.getElementById("cmp-train"), { title: "Training loss" });
  for (const id of ids) {
    const run = await tfApi("GET", `/runs/${encodeURIComponent(id)}/metrics.json`);
    for (const r of run.metrics) (r.split === "validation" ? loss : train).add(run.name, r.step, r.loss, { dots: r.split === "validation" });
  }
}
