// The Playground: a node form built from GET /v1/models, validated live by POST /v1/validate,
// run by POST /v1/jobs and followed on its Server-Sent Events stream. No build step, no
// dependencies: plain modern JavaScript served by the API process itself.
"use strict";

const TOKEN_KEY = "imagegen.playground.token"; // sessionStorage: this tab only
const RECENT_KEY = "imagegen.playground.recent"; // localStorage: recent runs in this browser
const RECENT_MAX = 20;
const REFERENCE = /^(vault:|env:|file:)/; // a credential field holds a reference, never the secret

const $ = (id) => document.getElementById(id);
const state = {
  catalog: null, // GET /v1/models
  extras: {}, // node fields the form does not show (description, output_type, ...), kept verbatim
  extraInputs: {},
  validateTimer: null,
  validateSeq: 0,
  pendingText: null, // the node last sent for validation (JSON text)
  valid: false,
  localProblems: {},
  runs: new Map(), // job id -> run view
  syncingJson: false,
};

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let payload = null;
  const text = await response.text();
  if (text) {
    try { payload = JSON.parse(text); } catch { payload = { detail: text.slice(0, 300) }; }
  }
  if (response.status === 401) {
    askForToken(sessionStorage.getItem(TOKEN_KEY)
      ? "The API refused this token (401). Enter a valid token."
      : "This API needs a bearer token (401). It is kept in this browser tab only.");
    throw new ApiError(401, payload);
  }
  if (!response.ok && response.status !== 422) throw new ApiError(response.status, payload);
  return { status: response.status, body: payload };
}

function askForToken(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("token").focus();
}

// ---------------------------------------------------------------- catalog

function models() {
  return (state.catalog && state.catalog.models) || [];
}

function modelByName(name) {
  return models().find((m) => m.name === name);
}

async function loadCatalog() {
  const { body } = await api("/v1/models");
  state.catalog = body;
  for (const select of [$("f-model"), $("f-compare-model")]) {
    select.replaceChildren(...models().map((m) => new Option(label(m), m.name)));
  }
  const preferred = models().find((m) => m.configured) || models()[0];
  if (preferred) $("f-model").value = preferred.name;
  const second = models().find((m) => m.name !== $("f-model").value);
  if (second) $("f-compare-model").value = second.name;
  $("f-variations").max = String(body.max_variations || 8);
  showBanner();
  fillSizes();
  fillProviderFields();
}

function label(model) {
  const tags = [];
  if (model.provider === "offline") tags.push("test pattern, not AI");
  else if (model.configured === false) tags.push("not configured");
  return tags.length ? `${model.name} (${tags.join(", ")})` : model.name;
}

function showBanner() {
  const configured = models().filter((m) => m.configured !== false && m.provider !== "offline");
  const banner = $("banner");
  if (configured.length) {
    banner.className = "banner";
    banner.textContent = `Configured models: ${configured.map((m) => m.name).join(", ")}. ` +
      "The offline_preview model draws a labelled test pattern and needs no key.";
  } else {
    banner.className = "banner offline";
    banner.textContent = "No AI image model is configured on this deployment (no Gemini key): " +
      "only offline_preview works here. It draws a labelled test pattern, not an AI image.";
  }
}

function sizesOf(model) {
  // [{size, aspect_ratio, tier, price_usd_per_image}]
  return (model && model.sizes) || [];
}

function fillSizes(keep) {
  const model = modelByName($("f-model").value);
  const select = $("f-size");
  const current = keep || select.value;
  const sizes = sizesOf(model);
  select.replaceChildren(...sizes.map((s) => new Option(
    `${s.size} (${s.aspect_ratio})${s.price_usd_per_image != null ? ` · $${s.price_usd_per_image}/image` : ""}`, s.size)));
  if (current && !sizes.some((s) => s.size === current)) {
    // Keep a pasted size the model does not support visible, so its problem shows at the field.
    select.append(new Option(`${current} (not offered by ${model ? model.name : "this model"})`, current));
  }
  if (current) select.value = current;
  $("model-hint").textContent = model ? (model.description || "") : "";
}

function cloudSpecs() {
  return (state.catalog && state.catalog.clouds) || {};
}

function fillProviderFields(values = {}) {
  const provider = $("f-cloud-provider").value;
  const spec = cloudSpecs()[provider] || { fields: [] };
  const box = $("provider-fields");
  const old = collectProviderFields();
  box.replaceChildren(...spec.fields.map((field) => {
    const name = typeof field === "string" ? field : field.name;
    const wrap = document.createElement("div");
    wrap.className = "field";
    const id = `f-${name}`;
    const isCredential = name === spec.credential_field;
    wrap.innerHTML = `<label for="${id}"></label><input id="${id}" type="text" autocomplete="off">` +
      `<p class="problem" data-problem-for="inputs.${name}"></p>`;
    wrap.querySelector("label").textContent = isCredential ? `${name} (a secret reference)` : name;
    const input = wrap.querySelector("input");
    input.dataset.field = `inputs.${name}`;
    input.dataset.providerField = name;
    if (isCredential) {
      input.dataset.credential = "1";
      input.placeholder = "vault:secret/imagegen/acme#key";
    }
    input.value = values[name] ?? old[name] ?? "";
    return wrap;
  }));
}

function collectProviderFields() {
  const out = {};
  for (const input of document.querySelectorAll("[data-provider-field]")) {
    if (input.value.trim()) out[input.dataset.providerField] = input.value.trim();
  }
  return out;
}

// ---------------------------------------------------------------- form <-> node

function formToNode() {
  const inputs = { ...state.extraInputs };
  inputs.user_query = $("f-prompt").value;
  inputs.model = $("f-model").value;
  inputs.size = $("f-size").value;
  const variations = $("f-variations").value;
  inputs.variations = variations === "" ? variations : Number(variations);
  const seed = $("f-seed").value;
  if (seed !== "") inputs.seed = Number(seed); else delete inputs.seed;
  inputs.use_cloud = $("f-use-cloud").checked;
  for (const spec of Object.values(cloudSpecs())) {
    for (const field of spec.fields) delete inputs[typeof field === "string" ? field : field.name];
  }
  delete inputs.cloud_provider;
  if (inputs.use_cloud) {
    inputs.cloud_provider = $("f-cloud-provider").value;
    Object.assign(inputs, collectProviderFields());
  }
  return { ...state.extras, name: $("f-name").value, type: "image_generation", inputs };
}

function nodeToForm(node) {
  if (!node || typeof node !== "object" || Array.isArray(node)) throw new Error("the node must be a JSON object");
  const { name, type, inputs, ...extras } = node;
  if (inputs !== undefined && (typeof inputs !== "object" || inputs === null || Array.isArray(inputs))) {
    throw new Error("\"inputs\" must be a JSON object");
  }
  const given = { ...(inputs || {}) };
  state.extras = extras;
  if (type !== undefined && type !== "image_generation") state.extras.type = type;
  $("f-name").value = name ?? "";
  $("f-prompt").value = given.user_query ?? "";
  if (given.model !== undefined && !modelByName(given.model)) {
    $("f-model").append(new Option(`${given.model} (not in the catalog)`, given.model));
  }
  $("f-model").value = given.model ?? $("f-model").value;
  fillSizes(given.size !== undefined ? String(given.size) : undefined);
  $("f-variations").value = given.variations ?? 1;
  $("f-seed").value = given.seed ?? "";
  const useCloud = given.use_cloud === true || given.use_cloud === "true";
  $("f-use-cloud").checked = useCloud;
  // The seed's node says cloud_provider even when use_cloud is false: keep it, show it only when used.
  if (given.cloud_provider) $("f-cloud-provider").value = given.cloud_provider;
  const providerValues = {};
  for (const spec of Object.values(cloudSpecs())) {
    for (const field of spec.fields) {
      const key = typeof field === "string" ? field : field.name;
      if (key in given) providerValues[key] = String(given[key]);
    }
  }
  $("cloud-fields").hidden = !useCloud;
  fillProviderFields(providerValues);
  for (const key of ["user_query", "model", "size", "variations", "seed", "use_cloud", ...Object.keys(providerValues)]) {
    delete given[key];
  }
  if (!useCloud && given.cloud_provider) {
    // use_cloud false: the provider is informational; keep it in the JSON as the author wrote it.
  } else {
    delete given.cloud_provider;
  }
  state.extraInputs = given;
}

function writeJson() {
  if (state.syncingJson) return;
  $("node-json").value = JSON.stringify(formToNode(), null, 2);
  $("json-problem").textContent = "";
  $("node-json").removeAttribute("aria-invalid");
}

function onJsonEdited() {
  let node;
  try {
    node = JSON.parse($("node-json").value);
    state.syncingJson = true;
    nodeToForm(node);
  } catch (error) {
    $("json-problem").textContent = `Not applied: ${error.message}`;
    $("node-json").setAttribute("aria-invalid", "true");
    setRunnable(false);
    return;
  } finally {
    state.syncingJson = false;
  }
  $("json-problem").textContent = "";
  $("node-json").removeAttribute("aria-invalid");
  scheduleValidation();
}

function onFormEdited(event) {
  if (event && event.target === $("f-model")) fillSizes();
  if (event && event.target === $("f-cloud-provider")) fillProviderFields();
  $("cloud-fields").hidden = !$("f-use-cloud").checked;
  $("compare-fields").hidden = !$("f-compare").checked;
  writeJson();
  scheduleValidation();
}

// ---------------------------------------------------------------- validation

function scheduleValidation() {
  // A "change" event on leaving a field repeats the "input" events already handled: the same
  // node keeps its verdict (else clicking Run right after typing would find it disabled).
  const text = JSON.stringify(formToNode());
  if (text === state.pendingText) return;
  state.pendingText = text;
  setRunnable(false);
  clearTimeout(state.validateTimer);
  state.validateTimer = setTimeout(validateNow, 300);
}

function rawSecretProblems() {
  const problems = [];
  for (const input of document.querySelectorAll("[data-credential]")) {
    const value = input.value.trim();
    if (value && !REFERENCE.test(value)) {
      problems.push({ field: input.dataset.field, message:
        "looks like a raw secret; this page does not send it. Write a reference: " +
        "vault:<path>#<key>, env:<NAME> or file:</path>" });
    }
  }
  return problems;
}

async function validateNow() {
  const seq = ++state.validateSeq;
  const local = rawSecretProblems();
  if (local.length) {
    showProblems(local);
    $("estimate").textContent = "";
    return;
  }
  let result;
  try {
    result = await api("/v1/validate", { method: "POST", body: formToNode() });
  } catch (error) {
    if (seq === state.validateSeq) $("form-problems").textContent = `Validation unavailable: ${error.message}`;
    return;
  }
  if (seq !== state.validateSeq) return; // a newer edit is being validated
  const problems = (result.body && result.body.problems) || [];
  showProblems(problems);
  const cost = result.body && result.body.estimated_cost_usd;
  $("estimate").textContent = problems.length ? "" :
    cost == null ? "Estimated cost: unpriced model" : `Estimated cost of this run: $${Number(cost).toFixed(4)}`;
  setRunnable(problems.length === 0);
}

function showProblems(problems) {
  for (const el of document.querySelectorAll("[data-problem-for]")) el.textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) {
    if (el.id !== "node-json") el.removeAttribute("aria-invalid");
  }
  const unplaced = [];
  for (const problem of problems) {
    const field = normaliseField(problem.field);
    const slot = document.querySelector(`[data-problem-for="${CSS.escape(field)}"]`);
    const input = document.querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent} ${problem.message}` : problem.message;
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", slot.id || (slot.id = `problem-${field.replace(/\W/g, "-")}`));
      }
    } else {
      unplaced.push(`${problem.field}: ${problem.message}`);
    }
  }
  $("form-problems").textContent = unplaced.join(" · ");
  if (problems.length) setRunnable(false);
}

function normaliseField(field) {
  if (!field) return "";
  if (field === "name" || field.startsWith("inputs.")) return field;
  return `inputs.${field}`;
}

function setRunnable(ok) {
  state.valid = ok;
  $("run").disabled = !ok;
}

// ---------------------------------------------------------------- runs

async function run(event) {
  event.preventDefault();
  if (!state.valid) return;
  const first = formToNode();
  const nodes = [{ label: first.inputs.model, node: first }];
  if ($("f-compare").checked) {
    const second = structuredClone(nodes[0].node);
    second.inputs.model = $("f-compare-model").value;
    const sizes = sizesOf(modelByName(second.inputs.model)).map((s) => s.size);
    if (!sizes.includes(second.inputs.size) && sizes.length) second.inputs.size = sizes[0];
    const seed = $("f-compare-seed").value;
    if (seed !== "") second.inputs.seed = Number(seed);
    nodes[0].label = `A · ${nodes[0].node.inputs.model}`;
    nodes.push({ label: `B · ${second.inputs.model}`, node: second });
  }
  $("runs").replaceChildren();
  for (const { label: title, node } of nodes) {
    try {
      const { body } = await api("/v1/jobs", { method: "POST", body: node });
      const view = openRunView(body.job_id, node, title);
      remember(body.job_id, node);
      follow(view);
    } catch (error) {
      const failure = document.createElement("p");
      failure.className = "problem";
      failure.textContent = `${title}: not started: ${describe(error)}`;
      $("runs").append(failure);
    }
  }
  updateCancel();
}

function describe(error) {
  const problems = error.problem && error.problem.problems;
  if (problems && problems.length) return problems.map((p) => `${p.field}: ${p.message}`).join("; ");
  return error.message;
}

function openRunView(jobId, node, title) {
  const panel = document.createElement("article");
  panel.className = "run";
  panel.dataset.jobId = jobId;
  panel.innerHTML = `<h3></h3><p class="summary" aria-live="polite"></p><div class="tiles"></div>`;
  panel.querySelector("h3").textContent = `${title || node.inputs.model} · ${node.inputs.size}`;
  $("runs").append(panel);
  const view = { jobId, node, panel, tiles: [], finished: false, lastEventId: null };
  const count = Number(node.inputs.variations) || 1;
  for (let index = 0; index < count; index += 1) view.tiles.push(tile(panel, index));
  setSummary(view, `job ${jobId}: queued`);
  state.runs.set(jobId, view);
  return view;
}

function tile(panel, index) {
  const el = document.createElement("figure");
  el.className = "tile queued";
  el.dataset.index = String(index);
  el.innerHTML = `<div class="state">#${index} queued</div>`;
  panel.querySelector(".tiles").append(el);
  return el;
}

function setSummary(view, text) {
  view.panel.querySelector(".summary").textContent = text;
}

function setTile(view, index, cls, text) {
  const el = view.tiles[index] || (view.tiles[index] = tile(view.panel, index));
  el.className = `tile ${cls}`;
  el.querySelector(".state").textContent = `#${index} ${text}`;
  return el;
}

function showImage(view, record) {
  const el = setTile(view, record.index, "done", "done");
  el.querySelectorAll("img, dl, .links").forEach((n) => n.remove());
  const viewable = /^https?:/.test(record.url);
  if (viewable) {
    const img = document.createElement("img");
    img.src = record.url;
    img.alt = `Variation ${record.index} of job ${view.jobId}`;
    img.width = record.width;
    img.height = record.height;
    el.append(img);
  }
  const facts = document.createElement("dl");
  const rows = [
    ["size", `${record.width}x${record.height}`],
    ["type", record.mime_type],
    ["seed", record.seed ?? "—"],
    ["attempts", record.attempts],
    ["time", `${(record.duration_ms / 1000).toFixed(2)} s`],
    ["cost", record.estimated_cost_usd == null ? "unpriced" : `$${record.estimated_cost_usd}`],
  ];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    dd.dataset.fact = k;
    facts.append(dt, dd);
  }
  el.append(facts);
  const links = document.createElement("div");
  links.className = "links row";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "secondary";
  copy.textContent = "Copy URL";
  copy.addEventListener("click", () => copyText(record.url, copy));
  links.append(copy);
  if (viewable) {
    const open = document.createElement("a");
    open.href = record.url; open.target = "_blank"; open.rel = "noopener"; open.textContent = "Open";
    links.append(open);
  } else {
    const note = document.createElement("span");
    note.className = "hint";
    note.textContent = "stored as a file URL; set IMAGEGEN_STORAGE_PUBLIC_BASE_URL to view it here";
    links.append(note);
  }
  el.append(links);
}

function showError(view, record) {
  const cls = record.kind === "canceled" ? "canceled" : "failed";
  const el = setTile(view, record.index, cls, record.kind === "canceled" ? "canceled" : `failed: ${record.kind}`);
  el.querySelectorAll("img, dl, .links, .message").forEach((n) => n.remove());
  const message = document.createElement("p");
  message.className = "message";
  message.textContent = record.message + (record.reason ? ` (${record.reason})` : "");
  el.append(message);
}

function outcomeOf(data) {
  // A variation event: {index, kind: "image"|"error", record} (or the record itself).
  if (data.record) return { kind: data.kind || (data.record.url ? "image" : "error"), record: data.record };
  if (data.image) return { kind: "image", record: data.image };
  if (data.error) return { kind: "error", record: data.error };
  return { kind: data.url ? "image" : "error", record: data };
}

function applyEvent(view, type, data) {
  if (type === "started") {
    setSummary(view, `job ${view.jobId}: running`);
  } else if (type === "variation_started") {
    setTile(view, data.index, "running", "running");
  } else if (type === "variation_retrying") {
    const wait = data.retry_in_s != null ? ` (next try in ${Number(data.retry_in_s).toFixed(1)} s)` : "";
    setTile(view, data.index, "retrying", `retrying after attempt ${data.attempt}: ${data.reason || "transient error"}${wait}`);
  } else if (type === "canceled") {
    setSummary(view, `job ${view.jobId}: cancel requested; running variations finish`);
  } else if (type === "variation") {
    const { kind, record } = outcomeOf(data);
    if (kind === "image") showImage(view, record); else showError(view, record);
  } else if (type === "completed") {
    finish(view, data.result || data);
  }
}

function finish(view, result) {
  view.finished = true;
  for (const record of result.images || []) showImage(view, record);
  for (const record of result.errors || []) showError(view, record);
  const cost = result.estimated_cost_usd == null ? "unpriced" : `$${result.estimated_cost_usd}`;
  const seconds = result.duration_ms != null ? `${(result.duration_ms / 1000).toFixed(2)} s` : "";
  setSummary(view, `job ${view.jobId}: ${result.status} · ${(result.images || []).length} image(s) · ` +
    `${seconds} · ${cost}`);
  view.panel.dataset.status = result.status;
  remember(view.jobId, view.node, result.status);
  updateCancel();
}

async function follow(view) {
  // fetch(), not EventSource: EventSource cannot send the Authorization header.
  for (let attempt = 0; attempt < 5 && !view.finished; attempt += 1) {
    try {
      const headers = { Accept: "text/event-stream" };
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      if (view.lastEventId) headers["Last-Event-ID"] = view.lastEventId;
      const response = await fetch(`/v1/jobs/${encodeURIComponent(view.jobId)}/events`, { headers });
      if (response.status === 401) { askForToken("The API refused this token (401)."); return; }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      await readEvents(response, (type, data, id) => {
        if (id) view.lastEventId = id;
        applyEvent(view, type, data);
      });
    } catch (error) {
      setSummary(view, `job ${view.jobId}: connection lost (${error.message}); reconnecting…`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  if (!view.finished) await refresh(view);
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message"; let id = null; const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const content = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = content;
        else if (field === "id") id = content;
        else if (field === "data") data.push(content);
      }
      if (!data.length) continue;
      let parsed = {};
      try { parsed = JSON.parse(data.join("\n")); } catch { parsed = { text: data.join("\n") }; }
      onEvent(type, parsed, id);
    }
  }
}

async function refresh(view) {
  try {
    const { body } = await api(`/v1/jobs/${encodeURIComponent(view.jobId)}`);
    if (body.result) finish(view, body.result);
    else setSummary(view, `job ${view.jobId}: ${body.state} (${body.done ?? 0}/${body.total ?? "?"})`);
  } catch (error) {
    setSummary(view, `job ${view.jobId}: ${describe(error)}`);
  }
}

async function cancelRuns() {
  for (const view of state.runs.values()) {
    if (view.finished) continue;
    try {
      const { body } = await api(`/v1/jobs/${encodeURIComponent(view.jobId)}/cancel`, { method: "POST" });
      setSummary(view, `job ${view.jobId}: ${body.message || "cancel requested"}`);
    } catch (error) {
      setSummary(view, `job ${view.jobId}: cancel failed: ${describe(error)}`);
    }
  }
}

function updateCancel() {
  $("cancel").disabled = ![...state.runs.values()].some((v) => !v.finished);
}

// ---------------------------------------------------------------- recent runs

function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]"); } catch { return []; }
}

function remember(jobId, node, status = "running") {
  const list = recent().filter((r) => r.job_id !== jobId);
  list.unshift({ job_id: jobId, model: node.inputs.model, size: node.inputs.size,
    prompt: String(node.inputs.user_query).slice(0, 80), status, at: new Date().toISOString(), node });
  localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
  showRecent();
}

function showRecent() {
  $("recent").replaceChildren(...recent().map((r) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = "Reopen";
    button.addEventListener("click", () => reopen(r.job_id, r.node));
    const text = document.createElement("span");
    text.textContent = ` ${r.at.slice(0, 19).replace("T", " ")} · ${r.model} · ${r.size} · ${r.status} · “${r.prompt}” (${r.job_id})`;
    li.append(button, text);
    return li;
  }));
}

async function reopen(jobId, node) {
  let body;
  try {
    ({ body } = await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
  } catch (error) {
    $("form-problems").textContent = `Cannot open job ${jobId}: ${describe(error)}`;
    return;
  }
  const known = node || (body.result && { inputs: { model: body.result.model, size: body.result.size,
    variations: body.result.variations, user_query: "" } }) || { inputs: { model: "?", size: "?", variations: body.total || 1 } };
  if (node) { nodeToForm(node); writeJson(); scheduleValidation(); }
  $("runs").replaceChildren();
  state.runs.clear();
  const view = openRunView(jobId, known, "Reopened");
  if (body.result) finish(view, body.result);
  else follow(view);
  updateCancel();
}

// ---------------------------------------------------------------- misc

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) { const was = button.textContent; button.textContent = "Copied"; setTimeout(() => { button.textContent = was; }, 1200); }
    return true;
  } catch {
    return false;
  }
}

async function start() {
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("auth").hidden = true;
    boot();
  });
  $("node-form").addEventListener("input", onFormEdited);
  $("node-form").addEventListener("change", onFormEdited);
  $("node-form").addEventListener("submit", run);
  $("cancel").addEventListener("click", cancelRuns);
  $("node-json").addEventListener("input", onJsonEdited);
  $("copy-json").addEventListener("click", async () => {
    const ok = await copyText($("node-json").value);
    $("copy-status").textContent = ok ? "Copied to the clipboard." : "Select the JSON and copy it (clipboard not available).";
  });
  $("reopen-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("reopen-id").value.trim();
    if (id) reopen(id, (recent().find((r) => r.job_id === id) || {}).node);
  });
  showRecent();
  await boot();
}

async function boot() {
  try {
    await loadCatalog();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      $("banner").textContent = `Cannot load the model catalog: ${error.message}`;
    }
    return;
  }
  if (!$("f-prompt").value) $("f-prompt").value = "a girl driving a red car";
  writeJson();
  scheduleValidation();
}

document.addEventListener("DOMContentLoaded", start);
