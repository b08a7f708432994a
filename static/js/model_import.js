// The registry's import form: a chosen file goes to /api/v1/uploads in resumable 8 MB pieces
// (purpose "model", through static/js/chunked_upload.js) with a progress bar, then is
// imported as a model version; a path on the server (no file) still posts the form. Errors
// are shown in the form, never as raw JSON.
(function () {
  "use strict";

  var form = document.getElementById("model-import-form");
  if (!form) return;

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
    var uploads = window.LLMIDE.chunkedUpload;  // static/js/chunked_upload.js
    var upload = await uploads.send("/api/v1/uploads", file, { purpose: "model" },
      Number(form.dataset.chunkBytes) || 8388608, progress);
    progress(1, "checking the model…");
    try {
      return await uploads.api("POST", "/api/v1/uploads/" + upload.id + "/import-model",
        JSON.stringify({ name: name }), { "Content-Type": "application/json" });
    } catch (err) {
      uploads.api("DELETE", "/api/v1/uploads/" + upload.id).catch(function () {});  // nothing to keep
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
