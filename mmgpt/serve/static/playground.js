// The playground: read an image as a data URL, POST a streaming chat completion, show the deltas as they come.
"use strict";
const $ = (id) => document.getElementById(id);
let imageUrl = null;
let modelId = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function ready() {
  $("send").disabled = !(imageUrl && modelId);
}

async function loadModel() {
  const badge = $("model");
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    modelId = body.data[0].id;
    badge.textContent = `model: ${modelId}`;
    badge.classList.remove("error");
  } catch (e) {
    badge.textContent = `no model: ${e.message}`;
    badge.classList.add("error");
  }
  ready();
}

function useFile(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    imageUrl = reader.result;
    $("preview").src = imageUrl;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    ready();
  };
  reader.readAsDataURL(file);
}

function showError(message) {
  const answer = $("answer");
  answer.className = "error";
  answer.textContent = message;
}

async function ask(event) {
  event.preventDefault();
  const answer = $("answer");
  const stats = $("stats");
  const request = {
    model: modelId,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value) || 0,
    messages: [{ role: "user", content: [
      { type: "text", text: $("question").value },
      { type: "image_url", image_url: { url: imageUrl } },
    ] }],
  };
  if ($("max-tokens").value !== "") request.max_tokens = Number($("max-tokens").value);
  if ($("seed").value !== "") request.seed = Number($("seed").value);
  $("send").disabled = true;
  answer.className = "streaming";
  answer.textContent = "";
  stats.textContent = "";
  const start = performance.now();
  let first = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finish = "";
    let usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            if (first === null) first = performance.now();
            answer.textContent += choice.delta.content;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    answer.className = "";
    if (!answer.textContent) answer.textContent = "(empty answer)";
    const total = ((performance.now() - start) / 1000).toFixed(2);
    const ttft = first === null ? "-" : ((first - start) / 1000).toFixed(2);
    stats.textContent = `${total} s in all, first token after ${ttft} s, finish: ${finish}` +
      (usage ? `, ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "");
  } catch (e) {
    showError(e.message);
  } finally {
    ready();
  }
}

$("image").addEventListener("change", (e) => useFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  useFile(e.dataTransfer.files[0]);
});
$("api-key").addEventListener("change", loadModel);
$("form").addEventListener("submit", ask);
loadModel();
