// A classifier evaluation's curves on the version page: ROC, precision-recall and reliability
// drawn with uPlot, and the binary threshold explorer. Each <details data-figures-url> loads
// its figures from the API the first time it opens (htmx may swap the block in later, so the
// listener is on the document).
(function () {
  "use strict";

  var COLORS = ["#4f46e5", "#0891b2", "#d97706", "#059669", "#db2777", "#7c3aed", "#dc2626", "#65a30d"];
  var axisStyle = { stroke: "#5e6679", grid: { stroke: "#eceef3", width: 1 }, ticks: { stroke: "#e3e6ee" } };

  // uPlot.join wants strictly increasing x per table; a ROC curve has vertical steps (one x,
  // several y). Each repeated x is moved right by a hair, invisible at any chart size.
  function table(xs, ys) {
    var outX = [], outY = [];
    for (var i = 0; i < xs.length; i++) {
      var x = xs[i];
      if (outX.length && x <= outX[outX.length - 1]) x = outX[outX.length - 1] + 1e-9;
      outX.push(x);
      outY.push(ys[i]);
    }
    return [outX, outY];
  }

  function widthOf(box) {
    return Math.max(220, Math.floor(box.getBoundingClientRect().width));
  }

  function chart(box, xLabel, yLabel, curves, diagonal) {
    var tables = curves.map(function (c) { return table(c.x, c.y); });
    if (diagonal) tables.push([[0, 1], [0, 1]]);
    if (!tables.length) {
      box.textContent = "Nothing to draw.";
      return;
    }
    var joined = uPlot.join(tables);
    var series = [{ label: xLabel, value: function (u, v) { return v === null ? "—" : v.toFixed(3); } }];
    curves.forEach(function (c, i) {
      series.push({ label: c.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: curves.length === 1 && c.x.length < 30 } });
    });
    if (diagonal) series.push({ label: diagonal, stroke: "#9aa1b1", dash: [4, 4], width: 1, spanGaps: true, points: { show: false } });
    box.textContent = "";
    var made = new uPlot({
      width: widthOf(box),
      height: 260,
      scales: { x: { time: false, range: [0, 1] }, y: { range: [0, 1] } },
      axes: [
        Object.assign({ label: xLabel, labelSize: 18, size: 36 }, axisStyle),
        Object.assign({ label: yLabel, labelSize: 18, size: 50 }, axisStyle),
      ],
      series: series,
    }, joined, box);
    box.dataset.series = String(curves.length);
    return made;
  }

  function draw(details, figures) {
    var boxes = {};
    details.querySelectorAll("[data-figure]").forEach(function (b) { boxes[b.dataset.figure] = b; });
    chart(boxes.roc, "false positive rate", "true positive rate", figures.roc.map(function (r) {
      return { label: r.label + " (AUC " + r.auc.toFixed(3) + ")", x: r.fpr, y: r.tpr };
    }), "chance");
    chart(boxes.pr, "recall", "precision", figures.pr.map(function (p) {
      // scikit-learn gives recall from 1 down to 0; the chart runs left to right.
      return { label: p.label + " (AP " + p.average_precision.toFixed(3) + ")", x: p.recall.slice().reverse(), y: p.precision.slice().reverse() };
    }), null);
    var cal = figures.calibration;
    chart(boxes.calibration, "confidence", "accuracy", [
      { label: "predicted class (ECE " + cal.ece.toFixed(3) + ")", x: cal.confidence, y: cal.accuracy },
    ], "perfect");
    if (figures.thresholds) explorer(details, figures.thresholds);
    details.dataset.drawn = "true";
  }

  function explorer(details, t) {
    var slider = details.querySelector("[data-threshold]");
    var shown = details.querySelector("[data-threshold-value]");
    if (!slider) return;
    var steps = t.threshold.length - 1;
    function update() {
      var i = Math.round(Number(slider.value) / 100 * steps);
      shown.textContent = t.threshold[i].toFixed(2);
      details.querySelectorAll("[data-cell]").forEach(function (cell) {
        var v = t[cell.dataset.cell][i];
        cell.textContent = ["tp", "fp", "tn", "fn"].indexOf(cell.dataset.cell) >= 0 ? String(v) : v.toFixed(3);
      });
    }
    slider.addEventListener("input", update);
    update();
  }

  function open(details) {
    if (details.dataset.drawn || details.dataset.loading || typeof uPlot === "undefined") return;
    details.dataset.loading = "true";
    fetch(details.dataset.figuresUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) return window.LLMIDE.errors.fromResponse(r).then(function (m) { throw new Error(m); });
        return r.json();
      })
      .then(function (answer) { draw(details, answer.figures); })
      .catch(function (err) { details.querySelector(".figure-grid").textContent = "Could not load the figures: " + (err.message || String(err)); })
      .finally(function () { delete details.dataset.loading; });
  }

  // "toggle" does not bubble: listen in the capture phase to see every <details> on the page.
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.open && details.matches && details.matches("details[data-figures-url]")) open(details);
  }, true);
})();
