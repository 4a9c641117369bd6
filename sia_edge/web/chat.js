// sia-edge's chat page. It uses the server like any client: GET /v1/models for the controls, and
// POST /v1/chat/completions with stream + logprobs, whose per-token `sia` objects say where steering happened.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null, model: null, signal: "entropy" };
// input id -> [request field, whole number?]
const NUMBER_FIELDS = { tau: ["tau", false], ratio: ["ratio", false], weight: ["weight", false],
                        temperature: ["temperature", false], "max-tokens": ["max_tokens", true], seed: ["seed", true] };

// --- controls ------------------------------------------------------------------------------------------------

async function loadModels() {
  const response = await fetch("/v1/models");
  const card = (await response.json()).data[0];
  state.model = card.id;
  $("model").textContent = `${card.sia.file.split("/").pop()} · value model ${
    (card.sia.value_model || "none").split("/").pop()}`;
  fillSelect($("objective"), card.sia.objectives, null, "server's value model");
  fillSelect($("gate"), card.sia.gates, card.sia.defaults.gate);
  const defaults = card.sia.defaults;
  state.signal = defaults.signal === "top2" ? "p2/p1" : defaults.signal === "full" ? "full entropy" : "entropy";
  for (const [id, [key]] of Object.entries(NUMBER_FIELDS)) {
    if (defaults[key] !== undefined && defaults[key] !== null) $(id).placeholder = String(defaults[key]);
  }
}

function fillSelect(select, names, chosen, emptyLabel) {
  select.replaceChildren();
  if (emptyLabel) select.append(new Option(emptyLabel, ""));
  for (const name of names) select.append(new Option(name, name, false, name === chosen));
}

function requestBody() {
  const body = { model: state.model, messages: state.messages, stream: true, logprobs: true, top_logprobs: 5 };
  if ($("objective").value) body.objective = $("objective").value;
  if ($("gate").value) body.gate = $("gate").value;
  for (const [id, [key, whole]] of Object.entries(NUMBER_FIELDS)) {
    const text = $(id).value.trim();  // the server checks the values and names the field it refuses
    if (text !== "") body[key] = whole ? parseInt(text, 10) : Number(text);
  }
  return body;
}

// --- the conversation ----------------------------------------------------------------------------------------

function addMessage(role, text) {
  const box = document.createElement("article");
  box.className = `message ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "sia-edge";
  const reply = document.createElement("div");
  reply.className = "reply";
  reply.textContent = text;
  box.append(who, reply);
  $("conversation").append(box);
  return box;
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.controller) return;
  $("message").value = "";
  showError(null);
  state.messages.push({ role: "user", content: text });
  const asked = addMessage("user", text);
  const box = addMessage("assistant", "");
  box.classList.add("streaming");
  const reply = { text: "", box };
  state.controller = new AbortController();
  setBusy(true);
  try {
    await streamReply(requestBody(), reply, state.controller.signal);
  } catch (error) {
    if (error.name === "AbortError") {
      finish(reply, null, "stopped");
    } else {
      showError(error.message);
      if (!reply.text) {  // refused before any text: take the message back, to edit and send again
        state.messages.pop();
        asked.remove();
        $("message").value = text;
      }
    }
  } finally {
    box.classList.remove("streaming");
    if (reply.text) state.messages.push({ role: "assistant", content: reply.text });
    else if (!box.querySelector(".stats")) box.remove();
    state.controller = null;
    setBusy(false);
  }
}

async function streamReply(body, reply, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {  // one server-sent event per blank-line-ended block
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
      buffer = buffer.slice(end + 2);
      for (const item of data) {
        if (item === "[DONE]") return;
        const chunk = JSON.parse(item);
        if (chunk.error) throw new Error(chunk.error.message);
        onChunk(chunk, reply);
      }
    }
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const { message, param } = body.error;
    return param ? `${message} (field: ${param})` : message;
  } catch {
    return `the server answered ${response.status}`;
  }
}

function onChunk(chunk, reply) {
  const choice = chunk.choices[0];
  const text = choice.delta.content || "";
  const tokens = choice.logprobs ? choice.logprobs.content || [] : [];
  if (text || tokens.length) addTokens(reply, text, tokens);
  if (chunk.sia) finish(reply, chunk.sia, choice.finish_reason);
}

function addTokens(reply, text, tokens) {
  // A chunk's text belongs to its tokens (several when one held half a character or a possible stop string).
  reply.text += text;
  const target = reply.box.querySelector(".reply");
  if (!tokens.length) { target.append(text); return; }
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  span.tokens = tokens;
  const junctions = tokens.filter((t) => t.sia.junction);
  // Tab visits junctions (and a reply's first token); arrow keys visit every token
  span.tabIndex = junctions.length || !target.querySelector(".tok") ? 0 : -1;
  if (junctions.length) span.classList.add("junction");
  if (junctions.some(flipped)) span.classList.add("flipped");
  target.append(span);
}

function flipped(token) {
  // steering changed the favourite: the most likely candidate after steering is not the base model's
  const c = token.sia.candidates || [];
  const best = (key) => c.reduce((b, x, i) => (x[key] > c[b][key] ? i : b), 0);
  return c.length > 0 && best("steered_probability") !== best("probability");
}

function finish(reply, sia, reason) {
  const stats = document.createElement("p");
  stats.className = "stats";
  if (sia) {
    const ratio = (100 * sia.junction_ratio).toFixed(0);
    stats.textContent = [`${sia.tokens} tokens`, `${sia.junctions} junctions (${ratio}%)`,
      `${sia.value_model_calls} value-model calls`, `${sia.tokens_per_second.toFixed(1)} tokens/s`, `seed ${sia.seed}`,
      sia.value_model || "unsteered", reason === "length" ? "length limit" : sia.stop_reason].join(" · ");
    stats.dataset.seed = sia.seed;
  } else {
    stats.textContent = "stopped";
  }
  reply.box.append(stats);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("conversation").replaceChildren();
  hideDetails();
  showError(null);
  $("message").focus();
}

// --- token details -------------------------------------------------------------------------------------------

const fmt = (x, digits) => (x === null || x === undefined ? "–" : x.toFixed(digits));
const pct = (p) => `${(100 * p).toFixed(1)}%`;

function describe(token) {
  const s = token.sia;
  const section = document.createElement("section");
  const title = document.createElement("h2");
  title.textContent = `${JSON.stringify(token.token)} ${s.junction ? "· junction" : ""}`;
  const facts = document.createElement("p");
  facts.className = "facts";
  facts.textContent = `log p ${fmt(token.logprob, 2)} · ${state.signal} ${fmt(s.signal, 3)} · rank ${s.rank}`;
  section.append(title, facts);
  const rows = s.candidates
    ? s.candidates.map((c) => [c.token, fmt(c.logprob, 2), fmt(c.reward, 3), c.probability, c.steered_probability,
                               c.chosen, c.token_id])
    : token.top_logprobs.map((t) => [t.token, fmt(t.logprob, 2), "", null, null, t.token === token.token, null]);
  const table = document.createElement("table");
  table.innerHTML = s.candidates
    ? "<thead><tr><th>candidate</th><th>log p</th><th>reward</th><th>before → after</th><th></th></tr></thead>"
    : "<thead><tr><th>likeliest</th><th>log p</th><th></th><th></th><th></th></tr></thead>";
  const body = document.createElement("tbody");
  for (const [text, logprob, reward, p, q, chosen, id] of rows) {
    const tr = document.createElement("tr");
    if (chosen) tr.className = "chosen";
    if (id !== null) tr.dataset.tokenId = id;
    const cells = [JSON.stringify(text), logprob, reward, p === null ? "" : `${pct(p)} → ${pct(q)}`];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    const bars = document.createElement("td");
    bars.className = "bar-cell";
    if (p !== null) bars.innerHTML = `<span class="p" style="width:${100 * p}%"></span>` +
                                     `<span class="q" style="width:${100 * q}%"></span>`;
    tr.append(bars);
    body.append(tr);
  }
  table.append(body);
  section.append(table);
  const note = document.createElement("p");
  note.className = "muted";
  note.textContent = s.candidates
    ? "before → after: the chance of being drawn from the top-k without and with steering (grey, blue)."
    : s.junction ? "A junction, but steering is off (w = 0): no value model asked."
    : "Not a junction: drawn from the base model's top-k, no value model asked.";
  section.append(note);
  return section;
}

function showDetails(span) {
  if (!span.tokens) return;
  document.querySelectorAll(".tok.active").forEach((t) => t.classList.remove("active"));
  span.classList.add("active");
  const panel = $("details");
  panel.replaceChildren(...span.tokens.map(describe));
  panel.hidden = false;
  span.setAttribute("aria-describedby", "details");
  const box = span.getBoundingClientRect();
  const left = Math.max(8, Math.min(box.left + window.scrollX, window.scrollX + innerWidth - panel.offsetWidth - 8));
  panel.style.left = `${left}px`;
  panel.style.top = `${box.bottom + window.scrollY + 6}px`;
}

function hideDetails() {
  $("details").hidden = true;
  document.querySelectorAll(".tok.active").forEach((t) => {
    t.classList.remove("active");
    t.removeAttribute("aria-describedby");
  });
}

function moveFocus(span, step) {
  const all = [...span.closest(".reply").querySelectorAll(".tok")];
  const next = all[all.indexOf(span) + step];
  if (next) next.focus();
}

// --- wiring --------------------------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", newChat);
  const conversation = $("conversation");
  conversation.addEventListener("mouseover", (e) => e.target.classList.contains("tok") && showDetails(e.target));
  conversation.addEventListener("focusin", (e) => e.target.classList.contains("tok") && showDetails(e.target));
  conversation.addEventListener("click", (e) => e.target.classList.contains("tok") && showDetails(e.target));
  conversation.addEventListener("keydown", (e) => {
    if (!e.target.classList.contains("tok")) return;
    if (e.key === "ArrowRight") { e.preventDefault(); moveFocus(e.target, 1); }
    if (e.key === "ArrowLeft") { e.preventDefault(); moveFocus(e.target, -1); }
    if (e.key === "Escape") hideDetails();
  });
  document.addEventListener("keydown", (e) => e.key === "Escape" && hideDetails());
  document.addEventListener("click", (e) => {
    if (!e.target.closest(".tok") && !e.target.closest("#details")) hideDetails();
  });
  if (matchMedia("(max-width: 720px)").matches) $("settings").open = false;  // a phone: the conversation first
}

wire();
loadModels().catch((error) => showError(`could not read /v1/models: ${error.message}`));
