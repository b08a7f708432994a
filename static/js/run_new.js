// The launch form: the base model's preset (learning rate, epochs, sequence length, method)
// fills those fields when the base changes; a dataset brings the base its data calls for
// (a chat set: a LoRA of SmolLM2) until the person picks a base; the version list shows only
// the chosen dataset's versions. The form is re-rendered by htmx after a refused launch, so
// the listeners sit on the document.
(function () {
  "use strict";

  var baseTouched = false;
  var switching = false; // our own change event (a dataset brought its base), not the person's

  function field(name) { return document.getElementById("f-" + name); }

  function applyPreset(select) {
    var presets;
    try { presets = JSON.parse(select.dataset.presets || "{}"); } catch (err) { return; }
    var preset = presets[select.value];
    if (!preset) return;
    Object.keys(preset).forEach(function (name) {
      var input = field(name);
      if (input) input.value = String(preset[name]);
    });
  }

  function showVersions() {
    var dataset = field("dataset_id");
    var versions = field("dataset_version_id");
    if (!dataset || !versions) return;
    Array.prototype.forEach.call(versions.options, function (option) {
      var mine = !option.dataset.dataset || option.dataset.dataset === dataset.value;
      option.hidden = !mine;
      option.disabled = !mine;
      if (!mine && option.selected) versions.value = "";
    });
  }

  function datasetChanged() {
    showVersions();
    var dataset = field("dataset_id");
    var base = field("base_model");
    if (!dataset || !base || baseTouched) return;
    var option = dataset.options[dataset.selectedIndex];
    var wanted = option && option.dataset.defaultBase;
    if (wanted && wanted !== base.value && base.querySelector('option[value="' + CSS.escape(wanted) + '"]')) {
      base.value = wanted;
      applyPreset(base);
      switching = true;
      try {
        base.dispatchEvent(new Event("change", { bubbles: true })); // re-estimate
      } finally {
        switching = false;
      }
    }
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!(target instanceof HTMLSelectElement)) return;
    if (target.id === "f-base_model") {
      if (switching) return;
      baseTouched = true;
      applyPreset(target);
    } else if (target.id === "f-dataset_id") {
      datasetChanged();
    }
  }, true); // capture: the fields are set before htmx's change trigger asks for an estimate

  function init() { showVersions(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
  document.addEventListener("htmx:afterSwap", init);
})();
