// The playground's chat: posts the conversation to data-stream-url and appends the answer's
// tokens as the server-sent events arrive (fetch + ReadableStream; EventSource cannot POST).
(function () {
  "use strict";

  var root = document.getElementById("playground");
  if (!root) return;

  var url = root.dataset.streamUrl;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var errors = window.LLMIDE.errors;  // static/js/errors.js
  var logs = document.getElementById("chat-logs");
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-input");
  var send = document.getElementById("chat-send");
  var stop = document.getElementById("chat-stop");
  var clear = document.getElementById("chat-clear");
  var system = document.getElementById("pg-system");
  var temperature = document.getElementById("pg-temperature");
  var topP = document.getElementById("pg-top-p");
  var maxTokens = document.getElementById("pg-max-tokens");
  var compare = document.getElementById("pg-compare");

  // One pane per model: its own log and conversation. The second shows only when comparing.
  var panes = [
    { log: document.getElementById("chat-log"), model: document.getElementById("pg-model"), history: [] },
    { log: document.getElementById("chat-log-b"), model: compare, history: [] },
  ];
  var controllers = [];

  function comparing() { return compare && compare.value !== ""; }

  function layout() {
    panes[1].log.hidden = !comparing();
    logs.classList.toggle("split", comparing());
  }
  if (compare) compare.addEventListener("change", layout);
  layout();

  function bubble(pane, kind, text) {
    var empty = pane.log.querySelector(".empty");
    if (empty) empty.remove();
    var div = document.createElement("div");
    div.className = "bubble " + kind;
    div.textContent = text;
    pane.log.appendChild(div);
    pane.log.scrollTop = pane.log.scrollHeight;
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

  // Streams one answer into a pane; shows finish reason, tokens, time to first token, tokens/s.
  async function askPane(pane, text) {
    pane.history.push({ role: "user", content: text });
    bubble(pane, "user", text);
    var answer = bubble(pane, "assistant streaming", "");
    var content = "";
    var messages = pane.history.slice();
    if (system.value.trim()) messages.unshift({ role: "system", content: system.value.trim() });
    var controller = new AbortController();
    controllers.push(controller);
    var started = performance.now();
    var firstAt = null;
    try {
      var res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "text/event-stream", "X-CSRF-Token": csrf },
        body: JSON.stringify({
          model: pane.model.value,
          messages: messages,
          temperature: numberOr(temperature, 0.7),
          top_p: numberOr(topP, 1),
          max_tokens: maxTokens.value === "" ? null : Math.round(numberOr(maxTokens, 128)),
        }),
        signal: controller.signal,
      });
      if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) {
        throw new Error(await errors.fromResponse(res));
      }
      var finish = null;
      await readEvents(res, function (event) {
        if (event.error) throw new Error(errors.fromEvent(event));
        if (event.delta) {
          if (firstAt === null) firstAt = performance.now();
          content += event.delta;
          answer.textContent = content;
          pane.log.scrollTop = pane.log.scrollHeight;
        }
        if (event.finish_reason) finish = event;
      });
      if (finish) {
        var ended = performance.now();
        var parts = [finish.finish_reason];
        if (finish.completion_tokens != null) parts.push(finish.completion_tokens + " tokens");
        if (firstAt !== null) {
          parts.push("TTFT " + Math.round(firstAt - started) + " ms");
          var decoding = (ended - firstAt) / 1000;
          if (finish.completion_tokens > 1 && decoding > 0) {
            parts.push(((finish.completion_tokens - 1) / decoding).toFixed(1) + " tokens/s");
          }
        }
        var meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = parts.join(" · ");
        answer.appendChild(meta);
        if (finish.trimmed_messages) {
          var note = document.createElement("span");
          note.className = "meta trim-note";
          note.textContent = "The oldest " + finish.trimmed_messages + " message" +
            (finish.trimmed_messages === 1 ? " was" : "s were") +
            " left out: the whole conversation no longer fits the model's context.";
          answer.appendChild(note);
        }
      }
      pane.history.push({ role: "assistant", content: content });
    } catch (err) {
      pane.history.pop(); // the question was not answered: a retry should not send it twice
      if (!content) answer.remove();
      bubble(pane, "error", err.name === "AbortError" ? "Stopped." : (err.message || String(err)));
    } finally {
      answer.classList.remove("streaming");
    }
  }

  async function ask(text) {
    setBusy(true);
    var active = comparing() ? panes : [panes[0]];
    try {
      // The same prompt goes to both models at once.
      await Promise.all(active.map(function (pane) { return askPane(pane, text); }));
    } finally {
      controllers = [];
      setBusy(false);
      input.focus();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text || controllers.length) return;
    input.value = "";
    ask(text);
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", function () {
    controllers.forEach(function (c) { c.abort(); });
  });
  clear.addEventListener("click", function () {
    controllers.forEach(function (c) { c.abort(); });
    panes.forEach(function (pane) { pane.history = []; pane.log.textContent = ""; });
  });
})();
