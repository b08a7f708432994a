// The run page's live view: one websocket feeds the loss chart, the metric cards, the progress
// bar and the log. The server sends the whole history first, then new data as it lands.
// Inputs come from data-* attributes on #run-live: data-ws-path, data-side-url, data-status.
// It maintains data-points (distinct steps received) so tests and people can see it is live.
(function () {
  "use strict";

  var root = document.getElementById("run-live");
  if (!root) return;

  // Every small chart on the page (training and system metrics), named by data-chart.
  var SMALL = Array.prototype.map.call(document.querySelectorAll("[data-chart]"), function (e) {
    return e.getAttribute("data-chart");
  });
  var COLORS = { train: "#4f46e5", eval: "#e8590c", small: "#4f46e5" };
  var MAX_LOG_LINES = 1000;

  var byStep = new Map(); // step -> {metric: value}
  var steps = []; // sorted distinct steps
  var lastLogId = 0;
  var status = root.dataset.status;
  var socket = null;
  var retries = 0;
  var stopped = false;
  var drawPending = false;
  var sideTimer = null;

  var el = {
    badge: document.getElementById("run-status"),
    bar: document.getElementById("run-progress"),
    percent: document.getElementById("run-percent"),
    step: document.getElementById("run-step"),
    total: document.getElementById("run-total"),
    eta: document.getElementById("run-eta"),
    note: document.getElementById("run-note"),
    error: document.getElementById("run-error"),
    log: document.getElementById("run-log"),
    conn: document.getElementById("conn"),
    count: document.getElementById("point-count"),
    lossBox: document.getElementById("loss-chart"),
    lossEmpty: document.getElementById("loss-empty"),
  };

  el.log.querySelectorAll("[data-id]").forEach(function (line) {
    lastLogId = Math.max(lastLogId, Number(line.dataset.id) || 0);
  });
  el.log.scrollTop = el.log.scrollHeight;

  // ---------- formatting ----------
  function formatMetric(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  function formatDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "—";
    s = Math.round(s);
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60), sec = s % 60;
    if (m < 60) return m + "m " + String(sec).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  // Python's json allows NaN/Infinity (a diverged loss); JSON.parse does not.
  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (err) {
      return JSON.parse(text.replace(/:(-?Infinity|NaN)(?=[,}\]])/g, ":null"));
    }
  }

  // ---------- charts ----------
  var axisStyle = { stroke: "#5e6679", grid: { stroke: "#eceef3", width: 1 }, ticks: { stroke: "#e3e6ee" } };
  var lossChart = null;
  var smallCharts = {};

  function widthOf(box) {
    return Math.max(120, Math.floor(box.getBoundingClientRect().width));
  }

  function makeCharts() {
    if (typeof uPlot === "undefined") return;
    lossChart = new uPlot({
      width: widthOf(el.lossBox),
      height: 260,
      scales: { x: { time: false } },
      axes: [
        Object.assign({ label: "step", labelSize: 18, size: 36 }, axisStyle),
        Object.assign({ size: 52 }, axisStyle),
      ],
      series: [
        { label: "step" },
        { label: "train loss", stroke: COLORS.train, width: 2, spanGaps: true, points: { show: false } },
        { label: "eval loss", stroke: COLORS.eval, width: 2, spanGaps: true, points: { show: true, size: 6, fill: COLORS.eval } },
      ],
      cursor: { drag: { x: true, y: false } },
    }, [[], [], []], el.lossBox);

    document.querySelectorAll("[data-chart]").forEach(function (box) {
      var key = box.dataset.chart;
      smallCharts[key] = new uPlot({
        width: widthOf(box),
        height: 70,
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: false } },
        axes: [{ show: false }, { show: false }],
        series: [{}, { stroke: COLORS.small, width: 1.5, spanGaps: true, points: { show: false }, fill: "rgba(79, 70, 229, .08)" }],
      }, [[], []], box);
    });

    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(function () {
        lossChart.setSize({ width: widthOf(el.lossBox), height: 260 });
        document.querySelectorAll("[data-chart]").forEach(function (box) {
          smallCharts[box.dataset.chart].setSize({ width: widthOf(box), height: 70 });
        });
      }).observe(root);
    }
  }

  function column(name) {
    return steps.map(function (s) {
      var v = byStep.get(s)[name];
      return typeof v === "number" && Number.isFinite(v) ? v : null;
    });
  }

  function draw() {
    drawPending = false;
    root.dataset.points = String(steps.length);
    el.count.textContent = String(steps.length);
    if (steps.length) el.lossEmpty.hidden = true;
    if (lossChart) lossChart.setData([steps.slice(), column("train_loss"), column("eval_loss")]);
    SMALL.forEach(function (key) {
      var values = column(key);
      var latest = null;
      for (var i = values.length - 1; i >= 0; i--) {
        if (values[i] !== null) { latest = values[i]; break; }
      }
      var valueEl = document.querySelector('[data-metric="' + key + '"]');
      if (valueEl && latest !== null) valueEl.textContent = formatMetric(latest);
      if (smallCharts[key]) smallCharts[key].setData([steps.slice(), values]);
    });
  }

  function scheduleDraw() {
    if (!drawPending) {
      drawPending = true;
      requestAnimationFrame(draw);
    }
  }

  // Points merge by step, so a step sent twice (after a reconnect) is never counted twice.
  function addPoints(points) {
    points.forEach(function (p) {
      var step = p.step;
      var row = byStep.get(step);
      if (!row) {
        row = {};
        byStep.set(step, row);
        if (!steps.length || step > steps[steps.length - 1]) {
          steps.push(step);
        } else {
          var i = steps.findIndex(function (s) { return s > step; });
          steps.splice(i, 0, step);
        }
      }
      Object.keys(p).forEach(function (k) { if (k !== "step") row[k] = p[k]; });
    });
    scheduleDraw();
  }

  // ---------- status, log, side panel ----------
  function setStatus(msg) {
    var s = msg.status;
    // What a person reads: "stopped" (kept before its end), "worker lost, resuming", or the status.
    var state = msg.state || s;
    el.badge.textContent = msg.label || state;
    el.badge.className = "badge badge-" + state;
    el.badge.dataset.status = state;
    var pct = msg.percent != null ? msg.percent : (s === "succeeded" ? 100 : (msg.total_steps ? Math.max(0, Math.min(100, Math.round(100 * msg.step / msg.total_steps))) : 0));
    el.bar.className = "progress lg " + state;
    if (el.note) {
      el.note.hidden = !msg.note;
      el.note.textContent = msg.note || "";
    }
    el.bar.setAttribute("aria-valuenow", String(pct));
    el.bar.firstElementChild.style.width = pct + "%";
    el.percent.textContent = pct + "%";
    el.step.textContent = String(msg.step ?? 0);
    el.total.textContent = msg.total_steps ? String(msg.total_steps) : "—";
    el.eta.textContent = formatDuration(msg.eta_s);
    el.error.hidden = !msg.error;
    el.error.textContent = msg.error || "";
    if (s !== status) {
      status = s;
      root.dataset.status = s;
      refreshSide();
    }
  }

  function addLog(lines) {
    var nearBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
    var touchesSide = false;
    lines.forEach(function (line) {
      if (line.id <= lastLogId) return;
      lastLogId = line.id;
      var div = document.createElement("div");
      div.className = "log-line level-" + line.level;
      div.dataset.id = String(line.id);
      var at = document.createElement("span");
      at.className = "at";
      at.textContent = (line.at || "").slice(11, 19);
      div.appendChild(at);
      div.appendChild(document.createTextNode(line.message));
      el.log.appendChild(div);
      if (/checkpoint|registered/i.test(line.message)) touchesSide = true;
    });
    while (el.log.childElementCount > MAX_LOG_LINES) el.log.firstElementChild.remove();
    if (nearBottom) el.log.scrollTop = el.log.scrollHeight;
    if (touchesSide) refreshSide();
  }

  // Checkpoints, the model link and the cancel button are server-rendered: re-fetch that block.
  function refreshSide() {
    if (sideTimer || typeof htmx === "undefined") return;
    sideTimer = setTimeout(function () {
      sideTimer = null;
      htmx.ajax("GET", root.dataset.sideUrl, { target: "#run-side", swap: "outerHTML" });
    }, 300);
  }

  // ---------- websocket ----------
  function setConn(state, text) {
    el.conn.dataset.state = state;
    el.conn.textContent = text;
  }

  function connect() {
    // Ask again for the last step we have: its points may have arrived in two flushes.
    var after = steps.length ? steps[steps.length - 1] - 1 : -1;
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    var url = proto + "//" + location.host + root.dataset.wsPath + "?after_step=" + after;
    setConn("connecting", retries ? "reconnecting…" : "connecting…");
    socket = new WebSocket(url);
    socket.onopen = function () {
      retries = 0;
      setConn("open", "live");
    };
    socket.onmessage = function (event) {
      var msg = parse(event.data);
      if (msg.type === "metrics") addPoints(msg.points || []);
      else if (msg.type === "log") addLog(msg.lines || []);
      else if (msg.type === "status") setStatus(msg);
    };
    socket.onclose = function (event) {
      socket = null;
      if (stopped) return;
      if (event.code === 4401) {
        setConn("closed", "signed out — reload to sign in");
        return;
      }
      if (event.code === 4403 || event.code === 4404) {
        setConn("closed", event.reason || "not available");
        return;
      }
      var delay = Math.min(10000, 500 * Math.pow(2, retries)) + Math.random() * 250;
      retries += 1;
      setConn("closed", "disconnected — retrying in " + Math.ceil(delay / 1000) + "s");
      setTimeout(connect, delay);
    };
  }

  window.addEventListener("pagehide", function () {
    stopped = true;
    if (socket) socket.close(1000);
  });

  makeCharts();
  connect();
})();
