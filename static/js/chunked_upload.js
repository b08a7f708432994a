// The resumable chunked upload behind both upload forms (datasets: upload.js; model import:
// model_import.js). The file goes to the uploads API in pieces; a piece that fails is retried
// from the offset the server reports, so a dropped connection loses nothing already sent.
// What the finished upload becomes (a dataset, a model version) is the caller's business.
(function () {
  "use strict";

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // A same-origin JSON call with the page's CSRF token. A refusal throws an Error with the
  // server's message (static/js/errors.js: never raw JSON) and the HTTP status.
  async function api(method, url, body, headers) {
    var response = await fetch(url, {
      method: method,
      body: body,
      credentials: "same-origin",
      headers: Object.assign({ "X-CSRF-Token": csrf(), Accept: "application/json" }, headers || {}),
    });
    if (!response.ok) {
      var err = new Error(await window.LLMIDE.errors.fromResponse(response));
      err.status = response.status;
      throw err;
    }
    try { return await response.json(); } catch (e) { return null; }
  }

  // Open an upload at `base` (filename and total_size, plus `fields`), send `file` in pieces
  // of `chunkBytes`, calling progress(fraction) after each; resolves to the upload record.
  async function send(base, file, fields, chunkBytes, progress) {
    var upload = await api("POST", base,
      JSON.stringify(Object.assign({ filename: file.name, total_size: file.size }, fields)),
      { "Content-Type": "application/json" });
    var offset = upload.received;
    var failures = 0;
    while (offset < file.size) {
      var end = Math.min(offset + chunkBytes, file.size);
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
      progress(offset / file.size);
    }
    return upload;
  }

  window.LLMIDE = window.LLMIDE || {};
  window.LLMIDE.chunkedUpload = { api: api, send: send };
})();
