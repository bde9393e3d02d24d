// The Playground: a node form built from GET /v1/models, validated live by POST /v1/validate,
// run by POST /v1/jobs and followed on its Server-Sent Events stream. No build step, no
// dependencies: plain modern JavaScript served by the API process itself.
//
// The node JSON textarea is the contract: its text, as the author wrote it, is exactly what is
// validated, submitted and copied (so the API's own checks, a key given twice or a number past
// what JSON.parse keeps, apply to it). The form is a view of that JSON, parsed; each form control
// edits one place of it and leaves the rest as the author wrote it. Values are judged by the API,
// not here. While the text cannot be parsed the form is locked: an edit there would rewrite it.
"use strict";

const TOKEN_KEY = "imagegen.playground.token"; // sessionStorage: this tab only
const RECENT_PREFIX = "imagegen.playground.recent."; // + a digest of the token: one list per tenant
const SHARED_RECENT_KEY = "imagegen.playground.recent"; // the old list every token shared: removed
const RECENT_MAX = 20;
// A credential field holds a reference, never the secret: the API's grammar (contract/secret_refs.py
// parse_secret_ref), applied to the value as written (not trimmed). Anything else is not sent.
const MAX_REF_CHARS = 512;
const REF_SEGMENT = /^[A-Za-z0-9_.@+=-]+$/; // ASCII only; a segment of dots only is refused
const REF_ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
// Credential fields checked whatever the catalog says (it may not be loaded: no token yet, or
// GET /v1/models failed); the catalog's own are added to these.
const CREDENTIAL_FIELDS = ["aws_credentials", "azure_connection_string", "gcp_credentials"];
// Within this long of the last run asked for, the same run asked for again (a double Enter, a
// held Enter, Enter after a click) is the same action: ignored, as a double click's second click is.
const REPEAT_MS = 800;
const FOLLOWED = new Set(["queued", "running"]); // a job in these states has events still to come
// Jobs followed again after a reload, newest first: each holds one of the browser's six connections
// to this host open, and the page needs some for itself. Older ones can be reopened from the list.
const RESUME_MAX = 2;

const $ = (id) => document.getElementById(id);
const state = {
  catalog: null, // GET /v1/models
  text: null, // the node JSON as the author wrote it: what is validated, submitted and copied
  node: null, // that text parsed: what the form shows and edits
  unreadable: false, // the JSON box holds text that does not parse: the form is locked
  validateTimer: null,
  validateSeq: 0,
  validation: null, // the validation under way (a promise), for a run that waits for its verdict
  pendingKey: null, // the node(s) last sent for validation (their JSON texts)
  verdict: null, // "pending" (an edit not judged yet), "valid" or "invalid"; null: no node judged
  checked: [], // the nodes the valid verdict was for: exactly what Run submits
  secondChosen: false, // the author picked the side-by-side model: the page no longer picks it
  secondModel: null, // that pick, restored when the catalog is loaded again (another token)
  lastRun: null, // {at, key}: the last run asked for, so a repeated keypress is not a second run
  submitting: false, // a Run click's submits are on their way
  runs: new Map(), // job id -> run view, for the runs shown (and only those)
  recent: null, // {storage, key}: where this token's recent runs are kept
};

// ---------------------------------------------------------------- small helpers

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function inputsOf(node) {
  return node && isObject(node.inputs) ? node.inputs : {};
}

function shown(value) {
  // A node value as a form control shows it: "" for absent, JSON for anything not a string.
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function numberOrText(text) {
  // A whole number typed in the form is written as a number; anything else as typed, for the API to judge.
  return /^-?\d+$/.test(text.trim()) ? Number(text) : text;
}

function setOrDelete(object, key, value) {
  if (value === "") delete object[key]; else object[key] = value;
}

function hex(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function newJobId() {
  // A UUID, as the API would pick one; getRandomValues works outside secure contexts too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const h = hex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(path, { method = "GET", body, raw, headers = {} } = {}) {
  // `raw`: JSON text sent as it is, byte for byte (the author's node); `body`: a value the page serialises.
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (raw !== undefined || body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = raw !== undefined ? raw : JSON.stringify(body);
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
  // Any other answer but 2xx is a failure (a 422 included): its problems are the caller's to show.
  if (!response.ok) throw new ApiError(response.status, payload);
  return { status: response.status, body: payload };
}

function problemText(problem) {
  // As the CLI prints one: field = value: what is allowed (no value when there is none to show).
  const value = problem.value === null || problem.value === undefined ? "" : ` = ${JSON.stringify(problem.value)}`;
  return `${problem.field}${value}: ${problem.message}`;
}

function problemsOf(error) {
  const problems = error && error.problem && error.problem.problems;
  return Array.isArray(problems) ? problems : [];
}

function describe(error, item) {
  // `item`: the node sent ({text, node}), when the request carried one.
  const problems = problemsOf(error);
  if (problems.length) return problems.map(problemText).join("; ");
  if (error.status === 413) return tooLargeText(error, item);
  return error.message;
}

// ---------------------------------------------------------------- a node too large

function count(n) {
  return n.toLocaleString("en-US");
}

function limitIn(text) {
  // The limit a size refusal names ("... at most 262144 bytes are allowed ..."); null if it names none.
  const match = /at most (\d+) bytes/.exec(text || "");
  return match ? Number(match[1]) : null;
}

function tooLargeText(error, item) {
  // The body limit is an operator's setting; what the author can change is the node: its longest
  // fields, whichever they are (the prompt has its own, smaller limit, checked before sending).
  const limit = limitIn(error.problem.detail);
  const accepts = limit ? `this API accepts at most ${count(limit)} bytes` : "more than this API accepts";
  if (!item) return `The request is larger than this API accepts${limit ? ` (at most ${count(limit)} bytes)` : ""}`;
  const size = utf8Bytes(item.text); // the body is the text itself
  return `Not accepted: the node is ${sizeText(size, [...item.text].length)}; ` +
    `${accepts}. To fit, ${shortenAdvice(item.node, limit ? size - limit : 0)}.`;
}

function utf8Bytes(text) {
  return new TextEncoder().encode(text).length;
}

function sizeText(bytes, characters) {
  // Every size the page names, the node's and each field's, in the same form.
  return `${count(bytes)} bytes (${count(characters)} characters)`;
}

// A field whose value the contract fixes ("type") cannot be shortened; one shorter than this
// cuts too little to be worth naming.
const FIXED_FIELDS = new Set(["type"]);
const MIN_ADVISED_BYTES = 64;

function shortenAdvice(node, excess) {
  // The longest strings in UTF-8 bytes (what the limit counts), as many as it takes to cut `excess`
  // bytes (at most three; the longest alone when the limit is unknown): the fields to shorten, not
  // always the prompt. Never one the contract fixes, nor one too short to help.
  const named = [];
  let cut = 0;
  for (const item of longestStrings(node)) {
    if (named.length === 3 || (named.length && cut >= excess)) break;
    if (FIXED_FIELDS.has(item.field) || item.bytes < MIN_ADVISED_BYTES) continue;
    named.push(item);
    cut += item.bytes;
  }
  if (!named.length) return "shorten the node";
  const list = named.map((item) => `${item.field}: ${sizeText(item.bytes, item.length)}`).join(", ");
  return `shorten its longest field${named.length > 1 ? "s" : ""}: ${list}`;
}

function longestStrings(node) {
  // Every string in the node with its place, longest first. A stack, not recursion: a node may nest deep.
  const found = [];
  const stack = [[node, ""]];
  while (stack.length) {
    const [value, path] = stack.pop();
    if (typeof value === "string") {
      found.push({ field: path, length: [...value].length, bytes: utf8Bytes(value) });
    } else if (Array.isArray(value)) {
      value.forEach((item, index) => stack.push([item, `${path}[${index}]`]));
    } else if (isObject(value)) {
      for (const [key, item] of Object.entries(value)) stack.push([item, path ? `${path}.${key}` : key]);
    }
  }
  return found.sort((a, b) => b.bytes - a.bytes);
}

function withSizeAdvice(problems, item) {
  // The API's node-size limit names the document, not what to shorten: the longest fields are named too.
  const tooLarge = problems.find((p) => p.field === "(document)" && limitIn(p.message) !== null);
  if (!tooLarge) return problems;
  const excess = utf8Bytes(item.text) - limitIn(tooLarge.message);
  return [...problems, { field: "(document)", value: null, message: `to fit, ${shortenAdvice(item.node, excess)}` }];
}

// ---------------------------------------------------------------- token

function askForToken(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("token").focus();
}

function useToken(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  $("auth").hidden = true;
  boot();
}

function forgetToken() {
  // Another tenant may use this tab next: nothing of this token's runs stays on the page.
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.recent && state.recent.storage === sessionStorage) state.recent.storage.removeItem(state.recent.key);
  state.recent = null;
  stopFollowing();
  showRecent();
  forgetVerdict();
  showFailure([]);
  $("forget-token").hidden = true;
  showNoCatalog("Enter an API token above to load the model catalog.");
  askForToken("Token forgotten. Enter a token to go on; it is kept in this browser tab only.");
}

// ---------------------------------------------------------------- catalog

function models() {
  return (state.catalog && state.catalog.models) || [];
}

function modelByName(name) {
  return models().find((m) => m.name === name);
}

function cloudSpecs() {
  return (state.catalog && state.catalog.clouds) || {};
}

function sizesOf(model) {
  // [{size, aspect_ratio, tier, price_usd_per_image}]
  return (model && model.sizes) || [];
}

async function loadCatalog() {
  const { body } = await api("/v1/models");
  state.catalog = body;
  for (const select of [$("f-model"), $("f-compare-model")]) {
    select.replaceChildren(...models().map((m) => new Option(label(m), m.name)));
  }
  pickSecondModel();
  showBanner();
}

function pickSecondModel() {
  // Side by side defaults to a model the workers can call, other than the node's: a second run bound
  // to fail compares nothing. A real model the workers reported first, then one they may call (not
  // reported either way), then the test pattern. The author's own pick is kept, across catalog
  // loads too (the options are rebuilt for another token), while the catalog still offers it.
  const select = $("f-compare-model");
  if (state.secondChosen) {
    if (modelByName(state.secondModel)) {
      select.value = state.secondModel;
      showCompareNote();
      return;
    }
    if (!state.catalog) return; // no catalog to judge it by: the pick stands
  }
  // No pick, or the catalog no longer offers it: the page picks.
  state.secondChosen = false;
  state.secondModel = null;
  const current = shown(inputsOf(state.node).model);
  const rank = (m) => (m.provider === "offline" ? 2 : m.configured === true ? 0 : 1);
  const others = models().filter((m) => m.name !== current && m.configured !== false);
  const pick = others.sort((a, b) => rank(a) - rank(b))[0];
  if (pick) {
    select.value = pick.name;
    $("compare-note").textContent = "";
    return;
  }
  if (modelByName(current)) select.value = current;
  $("compare-note").textContent = `No other model is configured on this deployment: the second run uses ` +
    `${select.value} too; give it a second seed to compare.`;
}

function showCompareNote() {
  // The author's pick: a note only when it is the node's own model (then only a seed differs).
  const same = $("f-compare-model").value === shown(inputsOf(state.node).model);
  $("compare-note").textContent = same
    ? "The second run uses the same model as the first; give it a second seed to compare."
    : "";
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

function showNoCatalog(message) {
  $("banner").className = "banner offline";
  $("banner").textContent = message;
}

function defaultNode() {
  const model = models().find((m) => m.configured) || models()[0];
  const size = sizesOf(model)[0];
  const inputs = { user_query: "a girl driving a red car", model: model ? model.name : "" };
  if (size) inputs.size = size.size;
  Object.assign(inputs, { variations: 1, use_cloud: false });
  return { name: "Playground image", type: "image_generation", inputs };
}

// ---------------------------------------------------------------- node -> form (the view)

function showNode(node) {
  const inputs = inputsOf(node);
  $("f-name").value = shown(node.name);
  $("f-prompt").value = shown(inputs.user_query);
  choose($("f-model"), inputs.model, "not in the catalog");
  fillSizes(inputs.size);
  $("f-variations").value = shown(inputs.variations);
  $("f-seed").value = shown(inputs.seed);
  const useCloud = $("f-use-cloud");
  useCloud.checked = inputs.use_cloud === true;
  // Not a boolean ("yes", 1, ...): shown as neither ticked nor not; the API says what it makes of it.
  useCloud.indeterminate = inputs.use_cloud !== undefined && typeof inputs.use_cloud !== "boolean";
  choose($("f-cloud-provider"), inputs.cloud_provider, "not offered");
  fillProviderFields(inputs);
  showSections();
  pickSecondModel();
}

function choose(select, value, note) {
  // Select the node's value; one the list does not offer is added, marked, so the view is faithful.
  select.querySelectorAll("option[data-extra]").forEach((option) => option.remove());
  const wanted = shown(value);
  if (![...select.options].some((option) => option.value === wanted)) {
    const option = new Option(wanted === "" ? "(not given)" : `${wanted} (${note})`, wanted);
    option.dataset.extra = "1";
    select.append(option);
  }
  select.value = wanted;
}

function fillSizes(size) {
  const model = modelByName($("f-model").value);
  const select = $("f-size");
  select.replaceChildren(...sizesOf(model).map((s) => new Option(
    `${s.size} (${s.aspect_ratio})${s.price_usd_per_image != null ? ` · $${s.price_usd_per_image}/image` : ""}`, s.size)));
  choose(select, size, `not offered by ${model ? model.name : "this model"}`);
  $("model-hint").textContent = model ? (model.description || "") : "";
}

function fillProviderFields(inputs) {
  // Only the chosen provider's fields, holding the node's values: no hidden field keeps a value.
  const provider = $("f-cloud-provider").value;
  const spec = cloudSpecs()[provider] || { fields: [] };
  $("provider-fields").replaceChildren(...spec.fields.map((name) => providerField(name, spec, inputs[name])));
}

function providerField(name, spec, value) {
  const isCredential = name === spec.credential_field;
  const wrap = document.createElement("div");
  wrap.className = "field";
  const labelEl = document.createElement("label");
  labelEl.htmlFor = `f-${name}`;
  labelEl.textContent = isCredential ? `${name} (a secret reference)` : name;
  const input = document.createElement("input");
  input.id = `f-${name}`;
  input.type = "text";
  input.autocomplete = "off";
  input.dataset.field = `inputs.${name}`;
  input.dataset.providerField = name;
  if (isCredential) input.placeholder = "vault:secret/imagegen/acme#key";
  input.value = shown(value);
  const problem = document.createElement("p");
  problem.className = "problem";
  problem.dataset.problemFor = `inputs.${name}`;
  wrap.append(labelEl, input, problem);
  return wrap;
}

function showSections() {
  const useCloud = $("f-use-cloud");
  $("cloud-fields").hidden = !(useCloud.checked || useCloud.indeterminate);
  $("compare-fields").hidden = !$("f-compare").checked;
}

// ---------------------------------------------------------------- form -> node (edits)

// Each control writes its one place of the node; an emptied control removes its key.
const FORM_EDITS = {
  "f-name": (el, inputs, node) => { node.name = el.value; },
  "f-prompt": (el, inputs) => { inputs.user_query = el.value; },
  "f-model": editModel,
  "f-size": (el, inputs) => { setOrDelete(inputs, "size", el.value); choose(el, inputs.size, "not offered"); },
  "f-variations": (el, inputs) => setOrDelete(inputs, "variations", numberOrText(el.value)),
  "f-seed": (el, inputs) => setOrDelete(inputs, "seed", numberOrText(el.value)),
  "f-use-cloud": editUseCloud,
  "f-cloud-provider": editCloudProvider,
};

function editModel(el, inputs) {
  setOrDelete(inputs, "model", el.value);
  choose(el, inputs.model, "not in the catalog"); // a pasted model no longer in the node leaves the list
  fillSizes(inputs.size);
  pickSecondModel();
}

function editUseCloud(el, inputs) {
  inputs.use_cloud = el.checked;
  if (el.checked && inputs.cloud_provider === undefined) {
    inputs.cloud_provider = $("f-cloud-provider").options[0].value;
    choose($("f-cloud-provider"), inputs.cloud_provider, "not offered");
  }
  // Unticked: the provider's fields go, so no value (a credential above all) hides in the node.
  if (!el.checked) dropProviderFields(inputs, null);
  fillProviderFields(inputs);
}

function editCloudProvider(el, inputs) {
  setOrDelete(inputs, "cloud_provider", el.value);
  choose(el, inputs.cloud_provider, "not offered");
  dropProviderFields(inputs, el.value); // the other providers' fields are no longer shown
  fillProviderFields(inputs);
}

function editProviderField(el, inputs) {
  setOrDelete(inputs, el.dataset.providerField, el.value.trim() ? el.value : "");
}

function dropProviderFields(inputs, keepProvider) {
  for (const [provider, spec] of Object.entries(cloudSpecs())) {
    if (provider === keepProvider) continue;
    for (const name of spec.fields) delete inputs[name];
  }
}

const SECOND_CONTROLS = new Set(["f-compare", "f-compare-model", "f-compare-seed"]);

function onFormEdited(event) {
  const el = event.target;
  showSections();
  // Locked (its fieldset disabled) while the JSON cannot be read: an edit would rewrite the
  // author's unfinished text from the last node that parsed.
  if (!state.node || state.unreadable) return;
  if (SECOND_CONTROLS.has(el.id)) {
    onSecondEdited(el);
    return;
  }
  const edit = FORM_EDITS[el.id] || (el.dataset.providerField && editProviderField);
  if (!edit) return;
  // A form edit needs an inputs object; one the author wrote as something else is replaced.
  if (!isObject(state.node.inputs)) state.node.inputs = {};
  edit(el, state.node.inputs, state.node);
  writeJson();
  scheduleValidation();
}

function onSecondEdited(el) {
  // Not part of the node, but of what Run submits side by side: the second node is validated too.
  if (el.id === "f-compare-model") {
    state.secondChosen = true;
    state.secondModel = el.value;
    showCompareNote(); // a note about the page's pick no longer applies
  }
  if (el.id === "f-compare" && el.checked) pickSecondModel();
  scheduleValidation();
}

function writeJson() {
  // A form edit writes the whole node: from now on this text is what is validated, run and copied.
  state.text = JSON.stringify(state.node, null, 2);
  $("node-json").value = state.text;
  $("json-problem").textContent = "";
  $("node-json").removeAttribute("aria-invalid");
}

function onJsonEdited() {
  const text = $("node-json").value;
  let node;
  try {
    node = JSON.parse(text);
  } catch (error) {
    refuseJson(error.message);
    return;
  }
  if (!isObject(node)) {
    refuseJson("the node must be a JSON object");
    return;
  }
  state.text = text; // verbatim: JSON.parse keeps the last of a key given twice, the API sees both
  state.node = node;
  lockForm(false);
  showNode(node);
  $("json-problem").textContent = "";
  $("node-json").removeAttribute("aria-invalid");
  scheduleValidation();
}

function refuseJson(reason) {
  $("json-problem").textContent = `Not applied: ${reason}`;
  $("node-json").setAttribute("aria-invalid", "true");
  lockForm(true);
  forgetVerdict();
  showFailure([]);
}

function lockForm(locked) {
  // The form follows the JSON; while the JSON cannot be read there is nothing for it to follow, and
  // the author's text is theirs to finish. The note says why the fields are disabled.
  state.unreadable = locked;
  const fields = $("node-fields");
  fields.disabled = locked;
  $("form-locked").hidden = !locked;
  if (locked) fields.setAttribute("aria-describedby", "form-locked");
  else fields.removeAttribute("aria-describedby");
}

// ---------------------------------------------------------------- validation

function plannedNodes() {
  // What Run would submit now: the node as the author wrote it and, side by side, the second node
  // made from it. Each is validated before a run, as it will be sent.
  const first = { title: shown(inputsOf(state.node).model), text: state.text, node: state.node };
  if (!$("f-compare").checked) return [first];
  const node = secondNode(state.node);
  first.title = `A · ${first.title}`;
  return [first, { title: `B · ${shown(node.inputs.model)}`, text: JSON.stringify(node), node, second: true }];
}

function secondNode(node) {
  // The node with the second model (at a size it offers) and seed. Built from the parsed node, so
  // written by the page: the first node is the author's text, already judged by the API as written.
  const second = structuredClone(node);
  if (!isObject(second.inputs)) second.inputs = {};
  const inputs = second.inputs;
  inputs.model = $("f-compare-model").value;
  const sizes = sizesOf(modelByName(inputs.model)).map((s) => s.size);
  if (inputs.size !== undefined && sizes.length && !sizes.includes(inputs.size)) inputs.size = sizes[0];
  const seed = $("f-compare-seed").value;
  if (seed !== "") inputs.seed = numberOrText(seed);
  return second;
}

function scheduleValidation() {
  // A "change" event on leaving a field repeats the "input" events already handled: the same
  // node keeps its verdict (else clicking Run right after typing would find it disabled).
  const key = JSON.stringify(plannedNodes().map((item) => item.text));
  if (key === state.pendingKey) return;
  state.pendingKey = key;
  state.validateSeq += 1; // a validation under way is of an older node: its verdict is not this one's
  // Run stays enabled meanwhile: a run asked for now waits for this verdict (verdictNow).
  setVerdict("pending");
  clearTimeout(state.validateTimer);
  state.validateTimer = setTimeout(startValidation, 300);
}

function startValidation() {
  clearTimeout(state.validateTimer);
  state.validateTimer = null;
  state.validation = validateNow();
  return state.validation;
}

async function verdictNow() {
  // The verdict on the node as it is now: a pending one is reached at once (the debounce cut short),
  // so Enter right after typing, or Run right after a paste, runs that node or shows its problems.
  for (let round = 0; round < 3 && state.verdict === "pending"; round += 1) {
    if (state.validateTimer !== null) startValidation();
    await state.validation;
  }
  return state.verdict === "valid";
}

function forgetVerdict() {
  // No verdict in flight or kept: the next node is validated, even one equal to the last.
  clearTimeout(state.validateTimer);
  state.validateTimer = null;
  state.validateSeq += 1;
  state.pendingKey = null;
  setVerdict(null);
}

async function validateNow() {
  const seq = ++state.validateSeq;
  const plan = plannedNodes();
  const local = localProblems(state.node, state.text);
  if (local.length) {
    showFailure(local);
    return;
  }
  // The second node only once the first is valid: the first's problems are the ones to fix first.
  const reports = [];
  for (const item of plan) {
    let report;
    try {
      report = (await api("/v1/validate", { method: "POST", raw: item.text })).body || {};
    } catch (error) {
      if (seq === state.validateSeq) refused(item, error);
      return;
    }
    if (seq !== state.validateSeq) return; // a newer edit is being validated
    const problems = Array.isArray(report.problems) ? report.problems : [];
    if (!report.valid || problems.length) {
      failed(item, withSizeAdvice(problems, item), problems.length ? "" : "The API found this node not valid.");
      return;
    }
    reports.push(report);
  }
  showValid(plan, reports);
}

function refused(item, error) {
  // No report. A 413 (too large) or a 422 is a verdict on the node; anything else is not, and
  // asking again may answer.
  if (error.status === 413) {
    failed(item, [], tooLargeText(error, item));
    return;
  }
  const problems = problemsOf(error);
  if (!problems.length) state.pendingKey = null;
  failed(item, problems, problems.length ? "" : `Validation unavailable: ${describe(error, item)}`);
}

function failed(item, problems, message = "") {
  if (!item.second) {
    showFailure(problems, message);
    return;
  }
  // The first node is valid: the second's problems go beside the side-by-side controls.
  showFailure([]);
  showSecondProblems(problems, message);
}

function showValid(plan, reports) {
  showProblems([]);
  state.checked = plan;
  // Valid, but the workers cannot call a model here (no key): say so before a run fails.
  const warnings = reports.flatMap((report, index) => (Array.isArray(report.warnings) ? report.warnings : [])
    .map((warning) => `${plan[index].second ? "Second run: " : ""}${problemText(warning)}`));
  $("form-problems").textContent = warnings.join("; ");
  $("estimate").textContent = estimateText(reports);
  setVerdict("valid");
}

function estimateText(reports) {
  const costs = reports.map((report) => report.estimated_cost_usd);
  if (costs.some((cost) => cost == null)) return "Estimated cost: unpriced model";
  const total = costs.reduce((sum, cost) => sum + Number(cost), 0);
  return `Estimated cost of ${reports.length > 1 ? "these runs" : "this run"}: $${total.toFixed(4)}`;
}

function localProblems(node, text) {
  return [...rawSecretProblems(text), ...promptProblems(node)];
}

function rawSecretProblems(text) {
  // Every provider's credential field in the text, shown or not, each time it is given: the page
  // never sends a raw secret. The text, not the parsed node: the text is what is sent, and of a key
  // given twice JSON.parse keeps only the last (a reference may hide a raw secret before it).
  // The built-in fields whether or not a catalog is loaded, and any more the catalog names. A
  // "secret" key anywhere (a webhook's signing key, in an envelope or not) is held to the same rule.
  const fields = new Set(CREDENTIAL_FIELDS);
  for (const spec of Object.values(cloudSpecs())) {
    if (spec && typeof spec.credential_field === "string") fields.add(spec.credential_field);
  }
  const problems = [];
  const message = "looks like a raw secret (it is not a valid secret reference); this page does not send it. " +
    "Write a reference: vault:<path>#<key>, env:<NAME> or file:</path>";
  const values = valuesOfKeys(text, new Set([...fields, "secret"])); // one reading of the text for them all
  for (const field of fields) {
    if (values.get(field).some(isRawSecret)) problems.push({ field: `inputs.${field}`, value: null, message });
  }
  if (values.get("secret").some(isRawSecret)) problems.push({ field: "webhook.secret", value: null, message });
  return problems;
}

const NOT_A_STRING = Symbol("not a string");

function valuesOfKeys(text, keys) {
  // For each of `keys`, every value it has in the JSON text, at any depth, each occurrence: a string
  // as parsed, null, or NOT_A_STRING. In JSON text every quote opens or closes a string, so reading
  // the strings in order meets each key; a key is a string followed by a colon.
  const strings = /"[^"\\]*(?:\\.[^"\\]*)*"/g;
  const colon = /\s*:\s*/y;
  const values = new Map([...keys].map((key) => [key, []]));
  let match;
  while ((match = strings.exec(text)) !== null) {
    colon.lastIndex = strings.lastIndex;
    if (!colon.test(text)) continue;
    const found = values.get(JSON.parse(match[0]));
    if (found === undefined) continue;
    const at = colon.lastIndex;
    if (text[at] === '"') {
      strings.lastIndex = at;
      found.push(JSON.parse(strings.exec(text)[0]));
    } else {
      found.push(text.startsWith("null", at) ? null : NOT_A_STRING);
    }
  }
  return values;
}

function isRawSecret(value) {
  // Absent, null or empty is no secret; a reference names one; anything else may be one (a number,
  // an object, a string that only starts like a reference).
  if (value === null || value === undefined || value === "") return false;
  return typeof value !== "string" || !isSecretReference(value);
}

function isSecretReference(text) {
  // contract/secret_refs.py parse_secret_ref, rule for rule, on the text as written.
  if (text.length > MAX_REF_CHARS) return false;
  const colon = text.indexOf(":");
  if (colon < 0) return false;
  const scheme = text.slice(0, colon);
  const rest = text.slice(colon + 1);
  if (scheme === "env") return REF_ENV_NAME.test(rest);
  if (scheme === "file") return rest.startsWith("/") && safePath(rest);
  if (scheme !== "vault") return false;
  const hash = rest.indexOf("#");
  return hash >= 0 && safePath(rest.slice(0, hash)) && safeSegment(rest.slice(hash + 1));
}

function safeSegment(segment) {
  return REF_SEGMENT.test(segment) && segment.replace(/\./g, "") !== "";
}

function safePath(path) {
  // At least one segment; empty ones (a//b, a leading or trailing /) are dropped, as the API does.
  const segments = path.split("/").filter(Boolean);
  return segments.length > 0 && segments.every(safeSegment);
}

function promptProblems(node) {
  // The API's limit, from the catalog: a prompt past it is named here, not sent (a very long one
  // would meet the request-size limit instead, whose message is for operators).
  const max = state.catalog && state.catalog.max_prompt_chars;
  const query = inputsOf(node).user_query;
  if (!max || typeof query !== "string") return [];
  const length = [...query.trim()].length; // characters (code points), as the API counts them
  if (length <= max) return [];
  return [{ field: "inputs.user_query", value: null, message: `is ${length} characters; at most ${max} are allowed` }];
}

function showFailure(problems, message = "") {
  // Every failure replaces all an earlier verdict showed: no field problem or estimate outlives it.
  setVerdict("invalid");
  $("estimate").textContent = "";
  const unplaced = showProblems(problems);
  $("form-problems").textContent = [...unplaced, message].filter(Boolean).join(" · ");
}

function showProblems(problems) {
  // Each problem at its field when that field is shown; the others are returned, to go below the form.
  clearFieldProblems();
  const unplaced = [];
  for (const problem of problems) {
    const field = normaliseField(problem.field);
    const slot = document.querySelector(`[data-problem-for="${CSS.escape(field)}"]`);
    if (!slot || slot.closest("[hidden]")) {
      unplaced.push(problemText(problem));
      continue;
    }
    slot.textContent = slot.textContent ? `${slot.textContent} ${problemText(problem)}` : problemText(problem);
    const input = document.querySelector(`[data-field="${CSS.escape(field)}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", slot.id || (slot.id = `problem-${field.replace(/\W/g, "-")}`));
    }
  }
  return unplaced;
}

function showSecondProblems(problems, message) {
  // As the first node's, but all in one place beside the second model and seed, which are marked
  // when a problem is theirs.
  const texts = [...problems.map(problemText), message].filter(Boolean);
  $("compare-problems").textContent = `Second run: ${texts.join("; ")}`;
  for (const problem of problems) {
    const input = document.querySelector(`[data-second-field="${CSS.escape(normaliseField(problem.field))}"]`);
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", "compare-problems");
  }
}

function clearFieldProblems() {
  for (const slot of document.querySelectorAll("[data-problem-for]")) slot.textContent = "";
  $("compare-problems").textContent = "";
  for (const input of document.querySelectorAll("#node-form [data-field], #node-form [data-second-field]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby"); // else it points at an empty slot
  }
}

function normaliseField(field) {
  if (!field) return "";
  if (field === "name" || field.startsWith("inputs.")) return field;
  return `inputs.${field}`;
}

function setVerdict(verdict) {
  state.verdict = verdict;
  $("node-form").dataset.verdict = verdict || "none"; // for a test to wait on
  updateRun();
}

function updateRun() {
  // Enabled while a verdict is pending, not only once valid: Enter in a field (the form's implicit
  // submission) and a click are refused outright by a disabled button, and would say nothing.
  const runnable = state.verdict === "valid" || state.verdict === "pending";
  $("run").disabled = !runnable || state.submitting;
}

// ---------------------------------------------------------------- runs

async function run(event) {
  event.preventDefault();
  if (state.submitting) return;
  // One run per action: the same run asked for again at once (Enter pressed twice or held, Enter
  // right after a click) is ignored, as the second click of a double click is.
  const key = runKey();
  const now = Date.now();
  const repeated = state.lastRun && state.lastRun.key === key && now - state.lastRun.at < REPEAT_MS;
  state.lastRun = { at: now, key };
  if (repeated) return;
  // Disabled from the click until the submits return: a double click makes one run.
  state.submitting = true;
  updateRun();
  try {
    if (!(await verdictNow())) {
      // Not valid: its problems are shown. Still unjudged (edits kept coming): say so, not nothing.
      if (state.verdict === "pending") {
        $("form-problems").textContent = "Not run: the node is still being checked; run it again.";
      }
      return;
    }
    const plan = runPlan();
    stopFollowing();
    for (const item of plan) await submitOne(item);
  } finally {
    state.submitting = false;
    updateRun();
    updateCancel();
  }
}

function runKey() {
  // What a run asked for now would run: the node as written and the side-by-side controls.
  return JSON.stringify([state.text, $("f-compare").checked, $("f-compare-model").value, $("f-compare-seed").value]);
}

function ignoreRepeatedClick(event) {
  // The second click of a double click is no new run, even when the first one's submit has
  // already returned (a fast API answers within a double click's interval).
  if (event.detail > 1) event.preventDefault();
}

function runPlan() {
  // The nodes the valid verdict was for, as validated (later edits do not change what is sent; the
  // parsed node, which form edits change in place, is copied), and one job id per node chosen here:
  // sent as the Idempotency-Key, a POST sent again is the same job.
  return state.checked.map((item) => ({ ...item, node: structuredClone(item.node), jobId: newJobId() }));
}

async function submitOne(item) {
  const { title, node, jobId } = item;
  let answer;
  try {
    answer = await submitJob(item.text, jobId);
  } catch (error) {
    notStarted(title, describe(error, item));
    return;
  }
  const accepted = answer.body && answer.body.job_id;
  if (typeof accepted !== "string" || !accepted) {
    notStarted(title, `the API answered HTTP ${answer.status} without a job id`);
    return;
  }
  const size = shown(inputsOf(node).size) || "default size";
  const view = openRunView(accepted, `${title} · ${size}`, inputsOf(node).variations);
  remember(accepted, shown(node.name), answer.body.state || "queued");
  follow(view);
}

async function submitJob(text, jobId) {
  const request = { method: "POST", raw: text, headers: { "Idempotency-Key": jobId } };
  try {
    return await api("/v1/jobs", request);
  } catch (error) {
    if (error instanceof ApiError) throw error;
    // No answer at all (the connection dropped): sending the same key again cannot make a second job.
    return api("/v1/jobs", request);
  }
}

function notStarted(title, text) {
  const failure = document.createElement("p");
  failure.className = "problem";
  failure.textContent = `${title}: not started: ${text}`;
  $("runs").append(failure);
}

function stopFollowing() {
  // A new run (or a reopen, or another token) replaces the runs shown: their streams close and
  // Cancel no longer reaches them. The jobs go on; Recent runs can reopen them.
  for (const view of state.runs.values()) {
    view.stopped = true;
    view.abort.abort();
  }
  state.runs.clear();
  $("runs").replaceChildren();
  updateCancel();
}

function openRunView(jobId, title, variations) {
  const panel = document.createElement("article");
  panel.className = "run";
  panel.dataset.jobId = jobId;
  const heading = document.createElement("h3");
  heading.textContent = title;
  const summary = document.createElement("p");
  summary.className = "summary";
  summary.setAttribute("aria-live", "polite");
  const tiles = document.createElement("div");
  tiles.className = "tiles";
  panel.append(heading, summary, tiles);
  $("runs").append(panel);
  const view = { jobId, panel, tiles: [], finished: false, stopped: false, lastEventId: null,
    abort: new AbortController() };
  const count = Math.min(Number(variations) || 1, 64);
  for (let index = 0; index < count; index += 1) view.tiles.push(tile(panel, index));
  setSummary(view, `job ${jobId}: queued`);
  state.runs.set(jobId, view);
  return view;
}

function tile(panel, index) {
  const el = document.createElement("figure");
  el.className = "tile queued";
  el.dataset.index = String(index);
  const stateEl = document.createElement("div");
  stateEl.className = "state";
  stateEl.textContent = `#${index} queued`;
  el.append(stateEl);
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
    setRecentStatus(view.jobId, "running");
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
  setRecentStatus(view.jobId, result.status);
  updateCancel();
}

async function follow(view) {
  // fetch(), not EventSource: EventSource cannot send the Authorization header.
  for (let attempt = 0; attempt < 5 && !view.finished && !view.stopped; attempt += 1) {
    try {
      const headers = { Accept: "text/event-stream" };
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      if (view.lastEventId) headers["Last-Event-ID"] = view.lastEventId;
      const response = await fetch(`/v1/jobs/${encodeURIComponent(view.jobId)}/events`,
        { headers, signal: view.abort.signal });
      if (response.status === 401) { askForToken("The API refused this token (401)."); return; }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      await readEvents(response, (type, data, id) => {
        if (id) view.lastEventId = id;
        applyEvent(view, type, data);
      });
    } catch (error) {
      if (view.stopped) return; // replaced: its stream was closed on purpose
      setSummary(view, `job ${view.jobId}: connection lost (${error.message}); reconnecting…`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  if (!view.finished && !view.stopped) await refresh(view);
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
  for (const view of [...state.runs.values()]) {
    if (view.finished || view.stopped) continue;
    try {
      const { body } = await api(`/v1/jobs/${encodeURIComponent(view.jobId)}/cancel`, { method: "POST" });
      setSummary(view, body.message || `job ${view.jobId}: cancel requested`); // the message names the job
    } catch (error) {
      setSummary(view, `job ${view.jobId}: cancel failed: ${describe(error)}`);
    }
  }
}

function updateCancel() {
  $("cancel").disabled = ![...state.runs.values()].some((v) => !v.finished);
}

// ---------------------------------------------------------------- recent runs

async function openRecent(token) {
  // One list per token (so per tenant): keyed by a digest of it, another token in this browser
  // sees none of it. crypto.subtle exists in secure contexts only (https, localhost); elsewhere
  // the list lives in this tab only, as the token does.
  if (window.crypto && crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token || ""));
    state.recent = { storage: localStorage, key: RECENT_PREFIX + hex(new Uint8Array(digest)).slice(0, 32) };
  } else {
    state.recent = { storage: sessionStorage, key: `${RECENT_PREFIX}tab` };
  }
}

function recent() {
  if (!state.recent) return [];
  try {
    const list = JSON.parse(state.recent.storage.getItem(state.recent.key) || "[]");
    return Array.isArray(list) ? list.filter(isObject) : [];
  } catch {
    return [];
  }
}

function saveRecent(list) {
  if (state.recent) state.recent.storage.setItem(state.recent.key, JSON.stringify(list.slice(0, RECENT_MAX)));
  showRecent();
}

function remember(jobId, name, status) {
  // Only what Reopen needs: no node, no prompt, no bucket or credential reference.
  const list = recent().filter((r) => r.job_id !== jobId);
  list.unshift({ job_id: jobId, name: name.slice(0, 120), at: new Date().toISOString(), status });
  saveRecent(list);
}

function setRecentStatus(jobId, status) {
  const list = recent();
  const entry = list.find((r) => r.job_id === jobId);
  if (!entry || entry.status === status) return;
  entry.status = status;
  saveRecent(list);
}

function clearRecent() {
  if (state.recent) state.recent.storage.removeItem(state.recent.key);
  $("recent-status").textContent = "";
  showRecent();
}

function showRecent() {
  $("recent").replaceChildren(...recent().map((r) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = "Reopen";
    button.addEventListener("click", () => reopen(shown(r.job_id)));
    const text = document.createElement("span");
    text.textContent = ` ${shown(r.at).slice(0, 19).replace("T", " ")} · ${shown(r.status)} · ${shown(r.name)} (${shown(r.job_id)})`;
    li.append(button, text);
    return li;
  }));
}

async function refreshRecent() {
  // On load: each entry's status as the API has it now, and the jobs still queued or running
  // followed again (a reload would otherwise lose them, with Cancel).
  const answers = await Promise.all(recent().map(async (entry) => {
    try {
      return (await api(`/v1/jobs/${encodeURIComponent(shown(entry.job_id))}`)).body;
    } catch (error) {
      // 404: its records expired (results are kept for a while only); else: unknown for now.
      return error instanceof ApiError && error.status === 404 ? { job_id: entry.job_id, state: "expired" } : null;
    }
  }));
  for (const job of answers.filter(Boolean)) setRecentStatus(job.job_id, job.result ? job.result.status : job.state);
  const active = answers.filter((job) => job && FOLLOWED.has(job.state));
  for (const job of active.slice(0, RESUME_MAX)) showJob(job, "Resumed");
}

async function reopen(jobId) {
  $("recent-status").textContent = "";
  let body;
  try {
    ({ body } = await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
  } catch (error) {
    $("recent-status").textContent = `Cannot open job ${jobId}: ${describe(error)}`;
    return;
  }
  stopFollowing();
  showJob(body, "Reopened");
}

function showJob(job, title) {
  // A job known by its GET /v1/jobs/{id} view: its result when finished, else followed.
  const result = job.result;
  const view = openRunView(job.job_id, `${title} · ${job.model}${result ? ` · ${result.size}` : ""}`, job.total);
  setRecentStatus(job.job_id, result ? result.status : job.state);
  if (result) finish(view, result);
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
  // The list every token used to share held whole nodes (prompts, buckets, credential references).
  localStorage.removeItem(SHARED_RECENT_KEY);
  $("auth-form").addEventListener("submit", useToken);
  $("forget-token").addEventListener("click", forgetToken);
  $("node-form").addEventListener("input", onFormEdited);
  $("node-form").addEventListener("change", onFormEdited);
  $("node-form").addEventListener("submit", run);
  $("run").addEventListener("click", ignoreRepeatedClick);
  $("cancel").addEventListener("click", cancelRuns);
  $("node-json").addEventListener("input", onJsonEdited);
  $("copy-json").addEventListener("click", async () => {
    const ok = await copyText($("node-json").value);
    $("copy-status").textContent = ok ? "Copied to the clipboard." : "Select the JSON and copy it (clipboard not available).";
  });
  $("reopen-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("reopen-id").value.trim();
    if (id) reopen(id);
  });
  $("clear-recent").addEventListener("click", clearRecent);
  await boot();
}

async function boot() {
  stopFollowing();
  forgetVerdict();
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  try {
    await loadCatalog();
  } catch (error) {
    showNoCatalog(error instanceof ApiError && error.status === 401
      ? "Enter an API token above to load the model catalog."
      : `Cannot load the model catalog: ${describe(error)}`);
    return;
  }
  await openRecent(sessionStorage.getItem(TOKEN_KEY));
  showRecent();
  await refreshRecent();
  if (state.text === null && $("node-json").value.trim() === "") {
    // The first load, the box still empty: a node to start from. Any text the author wrote there,
    // readable or not, is theirs and stays.
    state.node = defaultNode();
    writeJson();
  }
  // The box as it stands (after a new token too): read, shown and validated, or, if it cannot be
  // read, left as the author wrote it with the form locked.
  onJsonEdited();
}

document.addEventListener("DOMContentLoaded", start);
