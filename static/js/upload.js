// Big dataset files go in resumable chunks to the form's data-uploads-url (the chunked upload
// API), with a progress bar; small ones
// use the form's ordinary (htmx) post. A chunk that fails is retried from the offset the
// server reports, so a dropped connection loses nothing already sent.
(function () {
  "use strict";

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
      var err = new Error((data && data.detail) || ("HTTP " + response.status));
      err.status = response.status;
      throw err;
    }
    return data;
  }

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
    var size = Number(form.dataset.chunkBytes) || 8388608;
    var base = form.dataset.uploadsUrl;  // the page says where: no API path is spelled here
    var upload = await api("POST", base,
      JSON.stringify({ filename: file.name, total_size: file.size }),
      { "Content-Type": "application/json" });
    var offset = upload.received;
    var failures = 0;
    while (offset < file.size) {
      var end = Math.min(offset + size, file.size);
      try {
        var state = await api("PUT", base + "/" + upload.id, file.slice(offset, end), {
          "Content-Range": "bytes " + offset + "-" + (end - 1) + "/" + file.size,
          "Content-Type": "application/octet-stream",
        });
        offset = state.received;
        failures = 0;
      } catch (err) {
        if (err.status && err.status < 500 && err.status !== 409) throw err;
        if (++failures > 5) throw err;
        await new Promise(function (r) { setTimeout(r, 1000 * failures); });
        offset = (await api("GET", base + "/" + upload.id)).received;  // resume
      }
      show(form, offset / file.size);
    }
    show(form, 1, "checking rows…");
    var fields = new FormData(form);
    fields.delete("file");
    fields.delete("csrf_token");
    return api("POST", base + "/" + upload.id + "/complete", fields);
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
