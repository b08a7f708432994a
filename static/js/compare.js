// The compare page: overlays the chosen runs' curves of one metric (by step or by time since
// each run's start) with TensorBoard-style smoothing. The server sends each series already
// downsampled (first, last, lowest and highest point of each step range, at most ~1000 points),
// so the chart stays fast for runs of any length; smoothing is done here, on what was sent.
// Inputs come from data-* attributes on #compare: data-series-url, data-runs, data-metric.
// It sets data-series on #compare-chart (series drawn) so tests and people can see it is done.
(function () {
  "use strict";

  var root = document.getElementById("compare");
  if (!root) return;

  var COLORS = ["#4f46e5", "#e8590c", "#0ca678", "#d6336c", "#1c7ed6", "#f59f00", "#7048e8", "#2b8a3e", "#868e96", "#c92a2a"];
  var runs = JSON.parse(root.dataset.runs || "[]");
  var seriesUrl = root.dataset.seriesUrl;
  var el = {
    metric: document.getElementById("compare-metric"),
    align: document.getElementById("compare-align"),
    smoothing: document.getElementById("compare-smoothing"),
    smoothingValue: document.getElementById("compare-smoothing-value"),
    box: document.getElementById("compare-chart"),
    empty: document.getElementById("compare-empty"),
    note: document.getElementById("compare-note"),
  };
  var cache = {}; // metric -> the series API's answer
  var chart = null;
  var request = 0; // only the newest fetch may draw

  document.querySelectorAll("[data-swatch]").forEach(function (swatch) {
    swatch.style.background = COLORS[Number(swatch.dataset.swatch) % COLORS.length];
  });

  // TensorBoard's smoothing: an exponential moving average, debiased so the curve does not
  // start at zero. Gaps (null) stay gaps and do not move the average.
  function smooth(values, weight) {
    if (!weight) return values.slice();
    var last = 0, count = 0;
    return values.map(function (v) {
      if (v === null || !Number.isFinite(v)) return null;
      last = last * weight + (1 - weight) * v;
      count += 1;
      return last / (1 - Math.pow(weight, count));
    });
  }

  // One run's (x, y) table with strictly increasing x, as uPlot.join needs: with time on the x
  // axis two points may share a millisecond, and the later one wins.
  function table(points, byTime) {
    var xs = [], ys = [];
    points.forEach(function (p) {
      var x = byTime ? p[1] : p[0];
      if (xs.length && x <= xs[xs.length - 1]) {
        if (x < xs[xs.length - 1]) return;
        ys[ys.length - 1] = p[2];
        return;
      }
      xs.push(x);
      ys.push(p[2]);
    });
    return [xs, ys];
  }

  function formatSeconds(s) {
    if (s < 60) return Math.round(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0");
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  }

  function widthOf(box) {
    return Math.max(200, Math.floor(box.getBoundingClientRect().width));
  }

  function draw() {
    var answer = cache[el.metric.value];
    if (!answer || typeof uPlot === "undefined") return;
    var byTime = el.align.value === "time";
    var weight = Number(el.smoothing.value);
    el.smoothingValue.textContent = weight.toFixed(2);

    var withData = answer.series.filter(function (s) { return s.points.length; });
    var tables = withData.map(function (s) { return table(s.points, byTime); });
    if (!tables.length) {
      if (chart) { chart.destroy(); chart = null; }
      el.empty.hidden = false;
      el.empty.textContent = "None of these runs reported " + answer.metric + ".";
      el.box.dataset.series = "0";
      return;
    }
    var joined = uPlot.join(tables);
    var data = [joined[0]];
    var series = [{ label: byTime ? "time" : "step", value: byTime ? function (u, v) { return v === null ? "—" : formatSeconds(v); } : undefined }];
    withData.forEach(function (s, i) {
      var index = runs.findIndex(function (r) { return r.id === s.run_id; });
      var run = runs[index] || { id: s.run_id, name: "run " + s.run_id };
      var color = COLORS[index % COLORS.length];
      var raw = joined[i + 1];
      if (weight) {
        // The raw curve stays visible behind the smoothed one, as in TensorBoard.
        data.push(raw);
        series.push({ label: "#" + run.id + " raw", stroke: color + "40", width: 1, spanGaps: true, points: { show: false } });
      }
      data.push(smooth(raw, weight));
      series.push({ label: "#" + run.id + " " + run.name, stroke: color, width: 2, spanGaps: true, points: { show: false } });
    });

    var axisStyle = { stroke: "#5e6679", grid: { stroke: "#eceef3", width: 1 }, ticks: { stroke: "#e3e6ee" } };
    var xAxis = Object.assign({ label: byTime ? "time since start" : "step", labelSize: 18, size: 36 }, axisStyle);
    if (byTime) xAxis.values = function (u, splits) { return splits.map(formatSeconds); };
    if (chart) chart.destroy();
    chart = new uPlot({
      width: widthOf(el.box),
      height: 320,
      scales: { x: { time: false } },
      axes: [xAxis, Object.assign({ size: 56 }, axisStyle)],
      series: series,
      cursor: { drag: { x: true, y: false } },
    }, data, el.box);
    el.empty.hidden = true;
    el.box.dataset.series = String(withData.length);

    var sent = answer.series.reduce(function (n, s) { return n + s.points.length; }, 0);
    var total = answer.series.reduce(function (n, s) { return n + s.total; }, 0);
    el.note.textContent = sent < total
      ? "Showing " + sent.toLocaleString() + " of " + total.toLocaleString() + " points: each step range keeps its first, last, lowest and highest point."
      : total.toLocaleString() + " points.";
  }

  function load() {
    var metric = el.metric.value;
    if (!metric) return;
    if (cache[metric]) { draw(); return; }
    var mine = ++request;
    el.empty.hidden = false;
    el.empty.textContent = "Loading…";
    fetch(seriesUrl + "&metric=" + encodeURIComponent(metric), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) return window.LLMIDE.errors.fromResponse(response).then(function (m) { throw new Error(m); });
        return response.json();
      })
      .then(function (answer) {
        cache[metric] = answer;
        if (mine === request) draw();
      })
      .catch(function (err) {
        if (mine !== request) return;
        el.empty.hidden = false;
        el.empty.textContent = "Could not load the curves: " + err.message;
      });
  }

  el.metric.addEventListener("change", load);
  el.align.addEventListener("change", draw);
  el.smoothing.addEventListener("input", draw);
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(function () {
      if (chart) chart.setSize({ width: widthOf(el.box), height: 320 });
    }).observe(root);
  }
  load();
})();
