// Behaviour shared by every page, attached through data-* attributes:
//   select[data-autosubmit]      submits its form on change (the workspace switcher)
//   form[data-confirm]           asks before a plain form posts (cancel, delete, stop)
//   [data-copy="#selector"]      copies the text of the element it names
//   form[data-reset-on-success]  clears an htmx form once its request succeeded
// Elements with class js-hide are no-JS fallbacks (e.g. the switcher's button).
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  document.addEventListener("change", function (event) {
    var el = event.target;
    if (el.matches && el.matches("select[data-autosubmit]") && el.form) el.form.requestSubmit();
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
