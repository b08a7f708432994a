// The registry's import form: a chosen file goes to /api/v1/uploads in resumable 8 MB pieces
// (purpose "model") with a progress bar, then is imported as a model version; a path on the
// server (no file) still posts the form. Errors are shown in the form, never as raw JSON.
(function () {
  "use strict";

  var form = document.getElementById("model-import-form");
  if (!form) return;

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  async function api(method, url, body, headers) {
    var response = await fetch(url, {
      method: method,
      body: body,
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": csrf(), Accept: "application/json" }, headers || {}),
    });
    var data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      var detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map(function (d) { return d.msg; }).join("; ");
      var err = new Error(detail || ("the server answered HTTP " + response.status));
      err.status = response.status;
      throw err;
    }
    return data;
  }

  function progress(fraction, text) {
    var row = document.getElementById("import-progress");
    row.hidden = false;
    var pct = Math.floor(fraction * 100);
    row.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
    row.querySelector(".progress > span").style.width = pct + "%";
    row.querySelector("[data-testid=import-progress-text]").textContent = text || pct + "%";
  }

  function message(text, kind) {
    var div = document.createElement("div");
    div.className = "alert alert-" + (kind || "error");
    div.setAttribute("role", kind === "success" ? "status" : "alert");
    div.setAttribute("data-testid", "import-message");
    div.textContent = text;
    document.getElementById("import-message").replaceChildren(div);
  }

  async function send(file, name) {
    var size = Number(form.dataset.chunkBytes) || 8388608;
    var upload = await api("POST", "/api/v1/uploads",
      JSON.stringify({ filename: file.name, total_size: file.size, purpose: "model" }),
      { "Content-Type": "application/json" });
    var offset = upload.received;
    var failures = 0;
    while (offset < file.size) {
      var end = Math.min(offset + size, file.size);
      try {
        var state = await api("PUT", "/api/v1/uploads/" + upload.id, file.slice(offset, end), {
          "Content-Range": "bytes " + offset + "-" + (end - 1) + "/" + file.size,
          "Content-Type": "application/octet-stream",
        });
        offset = state.received;
        failures = 0;
      } catch (err) {
        if (err.status && err.status < 500 && err.status !== 409) throw err;
        if (++failures > 5) throw err;
        await new Promise(function (r) { setTimeout(r, 1000 * failures); });
        offset = (await api("GET", "/api/v1/uploads/" + upload.id)).received;  // resume
      }
      progress(offset / file.size);
    }
    progress(1, "checking the model…");
    try {
      return await api("POST", "/api/v1/uploads/" + upload.id + "/import-model",
        JSON.stringify({ name: name }), { "Content-Type": "application/json" });
    } catch (err) {
      api("DELETE", "/api/v1/uploads/" + upload.id).catch(function () {});  // nothing to keep
      throw err;
    }
  }

  form.addEventListener("submit", async function (event) {
    var input = form.querySelector("input[type=file]");
    var file = input && input.files && input.files[0];
    if (!file) return;  // a path on the server: the ordinary form post
    event.preventDefault();
    var max = Number(form.dataset.maxBytes);
    if (max && file.size > max) {
      message("This file is larger than the import limit of " + Math.round(max / 1048576) + " MB.");
      return;
    }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      var name = form.querySelector("input[name=name]").value.trim();
      var version = await send(file, name);
      message("Imported as " + version.serving_name + "; opening it…", "success");
      window.location.assign("/models/versions/" + version.id);
    } catch (err) {
      message("Import refused: " + (err.message || String(err)));
      document.getElementById("import-progress").hidden = true;
    } finally {
      button.disabled = false;
    }
  });
})();
