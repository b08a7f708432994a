// Behaviour shared by every page, attached through data-* attributes:
//   select[data-autosubmit]      submits its form on change (the workspace switcher)
//   form[data-confirm]           asks before a plain form posts (cancel, delete, stop)
//   [data-copy="#selector"]      copies the text of the element it names
//   form[data-reset-on-success]  clears an htmx form once its request succeeded
//   input[type=file][data-max-bytes]  refuses a file over the upload limit before sending it
// A JSON error answering an htmx request (e.g. from the API's error handler) becomes an alert
// in #flash with the server's message (read by static/js/errors.js) instead of raw JSON
// swapped into the page; a request that never reached the server says so there too.
// Elements with class js-hide are no-JS fallbacks (e.g. the switcher's button).
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  function flash(message) {
    var box = document.getElementById("flash");
    if (!box) return;
    var alert = document.createElement("div");
    alert.className = "alert alert-error";
    alert.setAttribute("role", "alert");
    alert.textContent = message;
    box.replaceChildren(alert);
  }

  document.addEventListener("change", function (event) {
    var el = event.target;
    if (!el.matches) return;
    if (el.matches("select[data-autosubmit]") && el.form) el.form.requestSubmit();
    if (el.matches("input[type=file][data-max-bytes]")) {
      var max = Number(el.dataset.maxBytes);
      var file = el.files && el.files[0];
      el.setCustomValidity(file && max && file.size > max
        ? "This file is larger than the upload limit of " + Math.round(max / 1048576) + " MB."
        : "");
      el.reportValidity();
    }
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status < 400 || (xhr.getResponseHeader("content-type") || "").indexOf("json") === -1) return;
    event.detail.shouldSwap = false;
    flash(window.LLMIDE.errors.fromText(xhr.status, xhr.responseText, xhr.getResponseHeader("content-type")));
  });

  document.addEventListener("htmx:sendError", function () {
    flash("The server could not be reached; check the connection and try again.");
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.matches && form.matches("form[data-confirm]") && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    }, function () { /* clipboard refused (e.g. not a secure context): the text stays selectable */ });
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target;
    if (event.detail.successful && form.matches && form.matches("form[data-reset-on-success]")) form.reset();
  });
})();
