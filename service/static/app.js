// focus-serve demo page: plain JS, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const DEFAULT_TASK = "salient";
// Each run has its own id and AbortController: a newer choice aborts the older request, and
// only the newest run may touch the display, so an image is always shown with its own mask.
const state = { file: null, run: 0, controller: null, shownUrl: null };

function headers() {
  const key = $("apikey").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

async function loadTasks() {
  const response = await fetch("/tasks", { headers: headers() });
  if (!response.ok) {
    setStatus(`Cannot list tasks (${await errorText(response)}). Enter the API key if needed.`, true);
    return;
  }
  const { tasks } = await response.json();
  const select = $("task");
  const previous = select.value;
  select.innerHTML = "";
  for (const t of tasks) {
    const option = document.createElement("option");
    option.value = t.name;
    option.textContent = `${t.name} — ${t.description}`;
    select.appendChild(option);
  }
  const names = tasks.map((t) => t.name);
  if (previous && names.includes(previous)) select.value = previous;
  else if (names.includes(DEFAULT_TASK)) select.value = DEFAULT_TASK;
  setStatus(tasks.length ? "Choose or drop an image." : "The server has no models.", !tasks.length);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = src;
  });
}

function pixels(img, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

function drawComposites(original, mask) {
  const w = mask.naturalWidth;
  const h = mask.naturalHeight;
  const rgb = pixels(original, w, h);
  const m = pixels(mask, w, h).data;
  const overlay = new ImageData(w, h);
  const cutout = new ImageData(w, h);
  for (let i = 0; i < m.length; i += 4) {
    const a = m[i] / 255;
    const t = 0.55 * a;
    overlay.data[i] = rgb.data[i] * (1 - t) + 255 * t;
    overlay.data[i + 1] = rgb.data[i + 1] * (1 - t) + 32 * t;
    overlay.data[i + 2] = rgb.data[i + 2] * (1 - t) + 96 * t;
    overlay.data[i + 3] = 255;
    cutout.data[i] = rgb.data[i];
    cutout.data[i + 1] = rgb.data[i + 1];
    cutout.data[i + 2] = rgb.data[i + 2];
    cutout.data[i + 3] = m[i];
  }
  for (const [id, data] of [["overlay", overlay], ["cutout", cutout]]) {
    const canvas = $(id);
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").putImageData(data, 0, 0);
  }
}

function showResult(file, task, result, roundTrip, original, originalUrl, mask, maskUrl) {
  if (state.shownUrl) URL.revokeObjectURL(state.shownUrl);
  state.shownUrl = originalUrl;
  $("mask").src = maskUrl;
  $("original").src = original ? originalUrl : "";
  if (original) {
    drawComposites(original, mask);
  } else {
    // e.g. TIFF: the server decoded it, this browser cannot display it
    for (const id of ["overlay", "cutout"]) $(id).width = 0;
  }
  const t = result.timing;
  $("timing").textContent =
    `${result.width}×${result.height} · ${result.model.backend} on ${result.model.device} · ` +
    `model ${result.model.task} version ${result.model.version} · ` +
    `server ${t.total_ms.toFixed(1)} ms (preprocess ${t.preprocess_ms.toFixed(1)}, ` +
    `queue ${t.queue_ms.toFixed(1)}, compute ${t.compute_ms.toFixed(1)} for a batch of ` +
    `${t.batch_size}, postprocess ${t.postprocess_ms.toFixed(1)}) · round trip ` +
    `${roundTrip.toFixed(0)} ms · foreground ${(100 * result.foreground_fraction).toFixed(1)}%`;
  const link = $("download");
  link.href = maskUrl;
  link.download = `${file.name.replace(/\.[^.]+$/, "")}-${task}-mask.png`;
  link.hidden = false;
  const results = $("results");
  results.hidden = false;
  results.dataset.shown = file.name; // what the display now pairs: this file and its mask
  setStatus(`Done: ${file.name}`);
}

async function segment() {
  const file = state.file;
  if (!file) return;
  const task = $("task").value;
  if (!task) {
    setStatus("No task to run.", true);
    return;
  }
  if (state.controller) state.controller.abort(); // the older request's result is not wanted
  const controller = new AbortController();
  const run = ++state.run;
  state.controller = controller;
  const current = () => run === state.run;
  setStatus(`Segmenting ${file.name} (${task})…`);
  const params = new URLSearchParams({ format: "json" });
  const threshold = $("threshold").value.trim();
  if (threshold !== "") params.set("threshold", threshold);
  const form = new FormData();
  form.append("image", file, file.name);
  const started = performance.now();
  const originalUrl = URL.createObjectURL(file);
  try {
    const response = await fetch(`/segment/${encodeURIComponent(task)}?${params}`, {
      method: "POST",
      headers: headers(),
      body: form,
      signal: controller.signal,
    });
    const roundTrip = performance.now() - started;
    if (!response.ok) {
      if (current()) setStatus(`Failed: ${await errorText(response)}`, true);
      return;
    }
    const result = await response.json();
    const maskUrl = `data:image/png;base64,${result.mask_png_base64}`;
    const mask = await loadImage(maskUrl);
    let original = null;
    try {
      original = await loadImage(originalUrl);
    } catch (e) {
      original = null;
    }
    if (current()) showResult(file, task, result, roundTrip, original, originalUrl, mask, maskUrl);
  } catch (err) {
    if (current() && err.name !== "AbortError") setStatus(`Failed: ${err.message}`, true);
  } finally {
    if (current()) state.controller = null;
    if (state.shownUrl !== originalUrl) URL.revokeObjectURL(originalUrl);
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  segment();
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  $("task").addEventListener("change", segment);
  $("threshold").addEventListener("change", segment);
  $("apikey").addEventListener("change", loadTasks);
  loadTasks().catch((err) => setStatus(`Cannot reach the server: ${err.message}`, true));
}

init();
