// The playground's chat: posts the conversation to data-stream-url and appends the answer's
// tokens as the server-sent events arrive (fetch + ReadableStream; EventSource cannot POST).
(function () {
  "use strict";

  var root = document.getElementById("playground");
  if (!root) return;

  var url = root.dataset.streamUrl;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var log = document.getElementById("chat-log");
  var empty = document.getElementById("chat-empty");
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-input");
  var send = document.getElementById("chat-send");
  var stop = document.getElementById("chat-stop");
  var clear = document.getElementById("chat-clear");
  var model = document.getElementById("pg-model");
  var system = document.getElementById("pg-system");
  var temperature = document.getElementById("pg-temperature");
  var maxTokens = document.getElementById("pg-max-tokens");

  var history = []; // the conversation so far: {role, content}
  var controller = null;

  function bubble(kind, text) {
    if (empty) { empty.remove(); empty = null; }
    var div = document.createElement("div");
    div.className = "bubble " + kind;
    div.textContent = text;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  function setBusy(busy) {
    send.disabled = busy;
    stop.hidden = !busy;
    input.readOnly = busy;
  }

  function numberOr(el, fallback) {
    var v = Number(el.value);
    return el.value !== "" && Number.isFinite(v) ? v : fallback;
  }

  async function errorFrom(res) {
    if (res.redirected && res.url.indexOf("/login") !== -1) {
      return "Your session has ended; reload the page and sign in again.";
    }
    try {
      var body = await res.json();
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (err) { /* not JSON */ }
    return "The request failed (HTTP " + res.status + ").";
  }

  // Reads "data: ..." events; calls onEvent with each parsed payload until [DONE].
  async function readEvents(res, onEvent) {
    var reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) return;
      buffer += chunk.value;
      var cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        var block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        var lines = block.split("\n");
        for (var i = 0; i < lines.length; i++) {
          if (lines[i].indexOf("data:") !== 0) continue;
          var data = lines[i].slice(5).trim();
          if (data === "[DONE]") return;
          onEvent(JSON.parse(data));
        }
      }
    }
  }

  async function ask(text) {
    history.push({ role: "user", content: text });
    bubble("user", text);
    var answer = bubble("assistant streaming", "");
    var content = "";
    var messages = history.slice();
    if (system.value.trim()) messages.unshift({ role: "system", content: system.value.trim() });
    controller = new AbortController();
    setBusy(true);
    try {
      var res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream", "X-CSRF-Token": csrf },
        body: JSON.stringify({
          model: model.value,
          messages: messages,
          temperature: numberOr(temperature, 0.7),
          max_tokens: Math.round(numberOr(maxTokens, 128)),
        }),
        signal: controller.signal,
      });
      if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
        throw new Error(await errorFrom(res));
      }
      var finish = null;
      await readEvents(res, function (event) {
        if (event.error) throw new Error(event.error);
        if (event.delta) {
          content += event.delta;
          answer.textContent = content;
          log.scrollTop = log.scrollHeight;
        }
        if (event.finish_reason) finish = event;
      });
      if (finish) {
        var meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = finish.finish_reason + (finish.completion_tokens != null ? " · " + finish.completion_tokens + " tokens" : "");
        answer.appendChild(meta);
      }
      history.push({ role: "assistant", content: content });
    } catch (err) {
      history.pop(); // the question was not answered: a retry should not send it twice
      if (!content) answer.remove();
      if (err.name === "AbortError") {
        bubble("error", "Stopped.");
      } else {
        bubble("error", err.message || String(err));
      }
    } finally {
      answer.classList.remove("streaming");
      controller = null;
      setBusy(false);
      input.focus();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    ask(text);
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", function () { if (controller) controller.abort(); });
  clear.addEventListener("click", function () {
    if (controller) controller.abort();
    history = [];
    log.textContent = "";
  });
})();
