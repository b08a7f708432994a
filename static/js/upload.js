// Big dataset files go in resumable chunks to the form's data-uploads-url (the chunked upload
// API, through static/js/chunked_upload.js), with a progress bar; small ones use the form's
// ordinary (htmx) post.
(function () {
  "use strict";

  function show(form, fraction, text) {
    var row = form.querySelector("#upload-progress");
    row.hidden = false;
    var pct = Math.floor(fraction * 100);
    row.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
    row.querySelector(".progress > span").style.width = pct + "%";
    row.querySelector("[data-testid=upload-progress-text]").textContent = text || pct + "%";
  }

  function message(form, text, kind) {
    var box = form.querySelector("#upload-message");
    var div = document.createElement("div");
    div.className = "alert alert-" + (kind || "error");
    div.setAttribute("role", kind === "success" ? "status" : "alert");
    div.textContent = text;
    box.replaceChildren(div);
  }

  async function chunked(form, file) {
    var uploads = window.LLMIDE.chunkedUpload;  // static/js/chunked_upload.js
    var base = form.dataset.uploadsUrl;  // the page says where: no API path is spelled here
    var upload = await uploads.send(base, file, {}, Number(form.dataset.chunkBytes) || 8388608,
      function (fraction) { show(form, fraction); });
    show(form, 1, "checking rows…");
    var fields = new FormData(form);
    fields.delete("file");
    fields.delete("csrf_token");
    return uploads.api("POST", base + "/" + upload.id + "/complete", fields);
  }

  document.addEventListener("htmx:confirm", function (event) {
    var form = event.target;
    if (!form || form.id !== "upload-form") return;
    var input = form.querySelector("input[type=file]");
    var file = input && input.files && input.files[0];
    if (!file || file.size <= (Number(form.dataset.chunkBytes) || 8388608)) return;
    event.preventDefault();
    if (file.size > Number(form.dataset.maxDatasetBytes)) {
      message(form, "This file is larger than the dataset limit of " +
        Math.round(Number(form.dataset.maxDatasetBytes) / 1048576) + " MB.");
      return;
    }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    show(form, 0);
    chunked(form, file).then(function (dataset) {
      window.location.assign("/datasets/" + dataset.id);
    }).catch(function (err) {
      form.querySelector("#upload-progress").hidden = true;  // not "checking rows…" for ever
      message(form, "Upload refused: " + err.message);
      button.disabled = false;
    });
  });
})();
