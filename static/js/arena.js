// The arena: a sealed pair of models answers one prompt side by side (streamed like the
// playground), then the vote reveals which model was A and which was B.
(function () {
  "use strict";

  var root = document.getElementById("arena");
  if (!root) return;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var errors = window.LLMIDE.errors;  // static/js/errors.js
  var form = document.getElementById("arena-form");
  var input = document.getElementById("arena-input");
  var send = document.getElementById("arena-send");
  var voteBox = document.getElementById("arena-vote");
  var result = document.getElementById("arena-result");
  var sides = { a: document.getElementById("arena-a"), b: document.getElementById("arena-b") };
  var battle = null, messages = [], answers = { a: "", b: "" };

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
  }

  function bubble(side, kind, text) {
    var div = document.createElement("div");
    div.className = "bubble " + kind;
    div.textContent = text;
    sides[side].appendChild(div);
    return div;
  }

  async function newBattle() {
    battle = null; messages = []; answers = { a: "", b: "" };
    voteBox.hidden = true; result.textContent = "";
    ["a", "b"].forEach(function (s) {
      sides[s].querySelectorAll(".bubble").forEach(function (b) { b.remove(); });
      sides[s].querySelector(".arena-side").textContent = "Model " + s.toUpperCase();
    });
    var res = await post(root.dataset.battleUrl, {});
    if (!res.ok) { result.textContent = await errors.fromResponse(res); return; }
    battle = (await res.json()).battle;
  }

  async function stream(side) {
    var answer = bubble(side, "assistant streaming", "");
    var text = "";
    try {
      var res = await post(root.dataset.streamUrl, { battle: battle, side: side, messages: messages });
      if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) throw new Error(await errors.fromResponse(res));
      var reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      var buffer = "";
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += chunk.value;
        var cut;
        while ((cut = buffer.indexOf("\n\n")) !== -1) {
          var line = buffer.slice(0, cut).replace(/^data:\s*/, "");
          buffer = buffer.slice(cut + 2);
          if (line === "[DONE]") continue;
          var event = JSON.parse(line);
          if (event.error) throw new Error(errors.fromEvent(event));
          if (event.delta) { text += event.delta; answer.textContent = text; }
        }
      }
    } catch (err) {
      bubble(side, "error", err.message || String(err));
    } finally {
      answer.classList.remove("streaming");
    }
    answers[side] = text;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    if (!battle || !voteBox.hidden || result.textContent) await newBattle();
    if (!battle) return;
    input.value = "";
    send.disabled = true;
    // One turn per battle: the vote is about these two answers to this prompt.
    messages = [{ role: "user", content: text }];
    bubble("a", "user", text); bubble("b", "user", text);
    await Promise.all([stream("a"), stream("b")]);
    send.disabled = false;
    voteBox.hidden = false;
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
  });
  document.getElementById("arena-new").addEventListener("click", newBattle);

  voteBox.addEventListener("click", async function (event) {
    var winner = event.target.dataset && event.target.dataset.winner;
    if (!winner || !battle) return;
    var res = await post(root.dataset.voteUrl, {
      battle: battle, messages: messages, answer_a: answers.a, answer_b: answers.b, winner: winner,
    });
    if (!res.ok) { result.textContent = await errors.fromResponse(res); return; }
    var body = await res.json();
    sides.a.querySelector(".arena-side").textContent = "A was " + body.model_a;
    sides.b.querySelector(".arena-side").textContent = "B was " + body.model_b;
    voteBox.hidden = true;
    result.textContent = "Thanks — A was " + body.model_a + ", B was " + body.model_b + ". Send another prompt for a new battle.";
    battle = null;
  });
})();
