/* Fastuner console: live job charts (uPlot, fed by the job's SSE metric stream) and teardown
   countdowns. Everything else works without JavaScript. No inline script: CSP is script-src 'self'. */
(function () {
  "use strict";
  var TERMINAL = { completed: 1, failed: 1, cancelled: 1 };

  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + "h " + pad(m) + "m" : m + "m " + pad(r) + "s";
  }

  function countdowns() {
    var nodes = document.querySelectorAll("time[data-countdown]");
    if (!nodes.length) return;
    var tick = function () {
      nodes.forEach(function (el) {
        var left = (Date.parse(el.getAttribute("datetime")) - Date.now()) / 1000;
        el.textContent = left > 0 ? fmtDuration(left) : "due now";
      });
    };
    tick();
    setInterval(tick, 1000);
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function pos(v) { v = num(v); return v !== null && v > 0 ? v : null; }

  // One chart per panel: the keys it plots (value getters) and its series options.
  var PANELS = [
    { id: "chart-bpt", series: [
      { label: "DataBPT", stroke: "#2457c5", get: function (r) { return num(r.data_bpt); } },
      { label: "ParamBPT", stroke: "#c2410c", get: function (r) { return num(r.param_bpt); } },
      { label: "loss (regularised)", stroke: "#1a7f37", get: function (r) {
        return r.loss_bpt !== undefined ? num(r.loss_bpt) : (r.loss !== undefined ? num(r.loss / Math.LN2) : null); } }
    ] },
    { id: "chart-s", band: true, series: [
      { label: "S", stroke: "#2457c5", get: function (r) { return num(r.s); } },
      { label: "Ŝ", stroke: "#7c3aed", get: function (r) { return num(r.s_hat); } },
      { label: "band high", stroke: "rgba(26,127,55,0.5)", dash: [4, 4], get: function (r) { return band(r, 1); } },
      { label: "target S*", stroke: "#1a7f37", get: function (r) { return num(r.target_s); } },
      { label: "band low", stroke: "rgba(26,127,55,0.5)", dash: [4, 4], get: function (r) { return band(r, -1); } }
    ] },
    { id: "chart-lambda", log: true, exp: true, series: [
      { label: "λ", stroke: "#b42318", get: function (r) { return pos(r.lambda); } }
    ] },
    { id: "chart-lr", exp: true, series: [
      { label: "learning rate", stroke: "#0e7490", get: function (r) { return num(r.lr); } }
    ] }
  ];

  function expTicks(u, splits) {
    return splits.map(function (v) { return v == null ? "" : v === 0 ? "0" : v.toExponential(1); });
  }

  function band(r, sign) {
    var t = num(r.target_s);
    if (t === null) return null;
    var b = num(r.band) || 0;
    return t * Math.exp(sign * Math.abs(b));
  }

  function jobCharts() {
    var root = document.getElementById("charts");
    if (!root || typeof uPlot === "undefined") return;
    var counter = document.getElementById("points-count");
    var state = document.getElementById("stream-state");
    var steps = [], lastStep = -1;
    var charts = PANELS.map(function (p) {
      var el = document.getElementById(p.id);
      var data = [steps].concat(p.series.map(function () { return []; }));
      var opts = {
        width: Math.max(280, el.clientWidth || 320), height: 220,
        scales: { x: { time: false }, y: p.log ? { distr: 3 } : {} },
        axes: [{ label: "step" }, p.exp ? { size: 60, values: expTicks } : {}],
        series: [{ label: "step" }].concat(p.series.map(function (s) {
          return { label: s.label, stroke: s.stroke, width: 1.5, dash: s.dash, spanGaps: true };
        }))
      };
      if (p.band) opts.bands = [{ series: [3, 5], fill: "rgba(26,127,55,0.10)" }];
      return { panel: p, el: el, data: data, plot: new uPlot(opts, data, el) };
    });

    function add(record, step) {
      if (step <= lastStep) return;  // a reconnect replays from the start
      lastStep = step;
      steps.push(step);
      charts.forEach(function (c) {
        c.panel.series.forEach(function (s, i) { c.data[i + 1].push(s.get(record)); });
      });
    }
    var pending = false;
    function redraw() {
      pending = false;
      charts.forEach(function (c) { c.plot.setData(c.data); });
      counter.textContent = String(steps.length);
      counter.setAttribute("data-points", String(steps.length));
    }
    window.addEventListener("resize", function () {
      charts.forEach(function (c) { c.plot.setSize({ width: Math.max(280, c.el.clientWidth), height: 220 }); });
    });

    var source = new EventSource(root.getAttribute("data-stream"));
    source.addEventListener("open", function () { state.textContent = "live"; });
    source.addEventListener("metric", function (ev) {
      var point = JSON.parse(ev.data);
      add(point.values, point.step);
      if (!pending) { pending = true; requestAnimationFrame(redraw); }
    });
    source.addEventListener("status", function (ev) {
      var st = JSON.parse(ev.data).status;
      state.textContent = st;
      if (TERMINAL[st]) { source.close(); state.textContent = st + " (stream ended)"; }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) state.textContent = "disconnected";
    });
  }

  document.addEventListener("DOMContentLoaded", function () { countdowns(); jobCharts(); });
})();
