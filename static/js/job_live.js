/* ComputeMesh: a job page kept live over its WebSocket, /ws/jobs/<id>/.
   Protocol: after open the page sends {"type": "resync", "after_seq", "after_log_seq"} with the
   last sequence numbers it applied; the server answers {"type": "history"} from the database,
   then streams {"type": "metrics"|"logs"|"job"}. Items with a seq at or below the last applied
   are dropped (no duplicates); a gap in the sequence asks for a resync (no holes). The socket
   reconnects with backoff (1 s doubling to 15 s) and resyncs from where it stopped.
   The server-rendered page is the initial state; this script only updates it. */
(function () {
  "use strict";

  var root = document.getElementById("job-live");
  if (!root || !window.WebSocket) return;

  var MAX_POINTS = 4000;      // chart points kept (older ones are thinned, not dropped)
  var MAX_LOG_LINES = 200;
  var HISTORY_LIMIT = 5000;   // the server's page size for metrics in one history message
  var ETA_WINDOW = 20;        // points the step rate is measured over (as the server does)
  var SPEED_WINDOW = 10;      // points the shown throughput is averaged over
  var BACKOFF_MIN = 1000, BACKOFF_MAX = 15000;
  var PARTIAL_REFRESH_MS = 20000; // machines table and result: refreshed at most this often
  // Mirrors marketplace/templatetags/market_ui.py JOB_TONES and job_states.CANCELLABLE.
  var TONES = {
    draft: "neutral", submitted: "info", funded: "info", matching: "info", running: "accent",
    interrupted: "warn", paused: "warn", verifying: "accent", completed: "ok", settled: "ok",
    cancelled: "neutral", failed: "bad", refunded: "neutral"
  };
  var CANCELLABLE = ["draft", "submitted", "funded", "matching", "running", "interrupted", "paused"];
  // A cancelled or failed job that was funded goes on to settled or refunded: its badge keeps
  // saying how it ended (as marketplace/selectors/job_status.py `job_state`).
  var ENDINGS = ["cancelled", "failed", "completed"], CLOSED = ["settled", "refunded"];

  var state = {
    lastSeq: 0, lastLogSeq: 0,
    points: [],          // {seq, step, total_steps, loss, samples_per_sec, t}
    logs: [],            // strings
    status: root.getAttribute("data-status"),
    endedAs: root.getAttribute("data-ended-as") || null,
    summary: null, summaryStatus: null, // the server's sentence beside the badge, and for which status
    progress: null,      // the latest snapshot's progress (or one built from points)
    cost: null,
    metricKey: undefined, // unknown until the first snapshot
    snapshotSeq: -1, snapshotEventAt: 0
  };
  var panel0 = document.getElementById("job-progress");
  if (panel0) {
    state.summary = panel0.getAttribute("data-summary");
    state.summaryStatus = panel0.getAttribute("data-status");
  }
  var ws = null, synced = false, queue = [], backoff = BACKOFF_MIN, retryTimer = null;
  var chart = null, renderPending = false, lastPartialRefresh = Date.now(), refreshing = false,
      refreshAgain = false; // a status came while the panel was being fetched: fetch it again
  var timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function $(name) { return document.querySelector('[data-live="' + name + '"]'); }

  // --- formatting -------------------------------------------------------------------------
  function etaText(seconds) {
    if (seconds == null || !(seconds > 0)) return "";
    if (seconds < 60) return "about " + Math.round(seconds) + " s left";
    if (seconds < 5400) return "about " + Math.round(seconds / 60) + " min left";
    return "about " + Math.round(seconds / 3600) + " h left";
  }
  function group(intString) { return intString.replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  // As the `money` filter: at least 2, at most 6 decimals, thousands separated.
  function money(value) {
    if (value == null || value === "") return "—";
    var n = Number(value);
    if (!isFinite(n)) return String(value);
    var s = n.toFixed(6).replace(/0+$/, "");
    var parts = s.split(".");
    var frac = (parts[1] || "");
    while (frac.length < 2) frac += "0";
    return group(parts[0]) + "." + frac;
  }
  // As the `data_size` filter and the `traffic_saved` tag (marketplace/templatetags/market_ui.py).
  function dataSize(n) {
    var units = ["B", "kB", "MB", "GB"], i = 0;
    n = Number(n);
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return i === 0 ? Math.round(n) + " B" : Number(n.toPrecision(3)) + " " + units[i];
  }
  function trafficText(t) {
    if (!t.ddp) return "";
    if (t.sent >= t.ddp) return dataSize(t.sent) + " sent to the other nodes (DDP).";
    var f = t.sent ? t.ddp / t.sent : Infinity;
    var ratio = !isFinite(f) ? "∞" : f >= 10 ? group(String(Math.round(f))) : f.toFixed(1);
    return dataSize(t.sent) + " sent to the other nodes; DDP would have sent " + dataSize(t.ddp) +
      ": " + ratio + "× less.";
  }
  function metricText(metric) {  // as the template: accuracy as a percentage, others 2 decimals
    if (!metric || metric.value == null) return "—";
    var v = Number(metric.value);
    if (metric.name === "accuracy") return (Math.round(v * 1000) / 10) + " %";
    return v.toFixed(2) + (metric.name === "mape" ? " %" : "");
  }

  // --- applying data ----------------------------------------------------------------------
  function applyPoints(points, fromHistory) {
    for (var i = 0; i < points.length; i++) {
      var p = points[i];
      if (p.seq <= state.lastSeq) continue;                    // seen already
      if (!fromHistory && p.seq !== state.lastSeq + 1) { resync(); return false; } // a hole
      state.lastSeq = p.seq;
      // A resumed run goes back to its checkpoint's step: the curve keeps the work that survives.
      while (state.points.length && state.points[state.points.length - 1].step >= p.step) state.points.pop();
      state.points.push({ seq: p.seq, step: p.step, total_steps: p.total_steps, loss: p.loss,
                          samples_per_sec: p.samples_per_sec, t: Date.parse(p.at) });
      if (p.comm_bytes != null) state.traffic = { sent: p.comm_bytes, ddp: p.comm_bytes_ddp, seq: p.seq };
    }
    if (state.points.length > MAX_POINTS) {  // thin the older half, keep the recent detail
      var half = Math.floor(state.points.length / 2);
      state.points = state.points.slice(0, half).filter(function (_, j) { return j % 2 === 0; })
        .concat(state.points.slice(half));
    }
    progressFromPoints();
    return true;
  }

  // Between job snapshots, progress follows the newest point; the ETA from the measured rate.
  function progressFromPoints() {
    var n = state.points.length;
    if (!n) return;
    var last = state.points[n - 1];
    var snap = state.progress || {};
    if (snap.last_seq != null && snap.last_seq >= last.seq) return; // the snapshot is as new
    var first = state.points[Math.max(0, n - ETA_WINDOW)];
    var eta = snap.eta_seconds;
    if (n >= 2 && last.t > first.t && last.step > first.step) {
      var rate = (last.step - first.step) / ((last.t - first.t) / 1000);
      eta = Math.max(0, (last.total_steps - last.step) / rate);
    }
    state.progress = {
      step: last.step, total_steps: last.total_steps,
      percent: last.total_steps ? Math.round(1000 * last.step / last.total_steps) / 10 : 0,
      loss: last.loss != null ? last.loss : snap.loss,
      samples_per_sec: last.samples_per_sec != null ? last.samples_per_sec : snap.samples_per_sec,
      eta_seconds: last.step >= last.total_steps ? 0 : eta,
      metric: snap.metric || null, last_seq: snap.last_seq
    };
  }

  function applyLogs(lines, fromHistory) {
    for (var i = 0; i < lines.length; i++) {
      var l = lines[i];
      if (l.seq <= state.lastLogSeq) continue;
      // History sends a tail (the newest lines), so a jump there is expected.
      if (!fromHistory && l.seq !== state.lastLogSeq + 1) { resync(); return false; }
      state.lastLogSeq = l.seq;
      // Rank labels: which process wrote the line (null: torchrun, the launcher, itself).
      state.logs.push((l.rank === null || l.rank === undefined ? "[launcher] " : "[rank " + l.rank + "] ") +
                      (l.stream === "stderr" ? "! " : "") + l.line);
    }
    if (state.logs.length > MAX_LOG_LINES) state.logs = state.logs.slice(-MAX_LOG_LINES);
    return true;
  }

  function applySnapshot(job) {
    if (!job) return;
    var seq = job.progress && job.progress.last_seq != null ? job.progress.last_seq : -1;
    var eventAt = job.event ? Date.parse(job.event.at) || 0 : 0;
    if (seq < state.snapshotSeq || eventAt < state.snapshotEventAt) return; // an older one
    state.snapshotSeq = seq;
    state.snapshotEventAt = eventAt;
    var statusChanged = job.status !== state.status;
    state.status = job.status;
    state.statusDisplay = job.status_display;
    state.cost = job.cost_so_far;
    state.spend = job.spend || state.spend;
    if (job.progress) {
      var mine = state.points.length ? state.points[state.points.length - 1].seq : 0;
      state.progress = job.progress;
      if (mine > (job.progress.last_seq || 0)) progressFromPoints(); // points are newer
    }
    var pr = job.progress;
    if (pr && pr.comm_bytes != null && (!state.traffic || state.traffic.seq <= (pr.last_seq || 0))) {
      state.traffic = { sent: pr.comm_bytes, ddp: pr.comm_bytes_ddp, seq: pr.last_seq || 0 };
    }
    var metric = job.progress && job.progress.metric;
    var metricKey = metric ? metric.name + ":" + metric.value : null;
    var metricChanged = state.metricKey !== undefined && metricKey !== state.metricKey;
    state.metricKey = metricKey;
    (job.events || (job.event ? [job.event] : [])).forEach(addEvent);
    if (statusChanged || metricChanged) refreshPartial(true);
    else if (Date.now() - lastPartialRefresh > PARTIAL_REFRESH_MS) refreshPartial(false);
  }

  // --- rendering --------------------------------------------------------------------------
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    var run = function () { renderPending = false; render(); };
    if (window.requestAnimationFrame) window.requestAnimationFrame(run); else setTimeout(run, 16);
  }

  function render() {
    renderStatus();
    renderProgress();
    renderLogs();
    renderChart();
  }

  function badgeKey() {
    if (CLOSED.indexOf(state.status) >= 0 && (state.endedAs === "cancelled" || state.endedAs === "failed")) {
      return state.endedAs;
    }
    return state.status;
  }

  function renderStatus() {
    var chip = $("status");
    var key = badgeKey();
    if (chip && key && chip.textContent !== key) {
      chip.textContent = key;
      chip.className = "chip chip-" + (TONES[key] || "neutral");
      root.setAttribute("data-status", state.status);
    }
    var disp = $("status-display");
    // The server's sentence (what was paid and refunded) once the panel for this status came.
    var text = state.summaryStatus === state.status && state.summary ? state.summary : state.statusDisplay;
    if (disp && text) disp.textContent = text;
    var cancel = $("cancel");
    if (cancel) cancel.hidden = CANCELLABLE.indexOf(state.status) < 0;
  }

  // Budget safety: the 80 % warning and the pause notice follow the snapshot's `spend`.
  function renderBudget() {
    var spend = state.spend;
    if (!spend) return;
    var warning = $("budget-warning");
    if (warning) warning.hidden = !spend.warning;
    var paused = $("budget-paused");
    if (paused) paused.hidden = !spend.paused;
    var percent = $("budget-percent");
    if (percent) percent.textContent = String(spend.percent);
    var spent = $("budget-spent");
    if (spent) spent.textContent = money(spend.spent);
    var limit = $("budget-limit");
    if (limit) limit.textContent = money(spend.limit);
  }

  // Moving-window figures from the newest points: the step rate over ETA_WINDOW points gives
  // the ETA, the throughput is the mean of the last SPEED_WINDOW samples, so that neither
  // jumps with each noisy report.
  function smoothed() {
    var n = state.points.length, out = { eta: null, speed: null };
    if (!n) return out;
    var w = state.points.slice(Math.max(0, n - ETA_WINDOW));
    var first = w[0], last = w[w.length - 1];
    if (w.length >= 2 && last.t > first.t && last.step > first.step) {
      var rate = (last.step - first.step) / ((last.t - first.t) / 1000);
      out.eta = last.step >= last.total_steps ? 0 : Math.max(0, (last.total_steps - last.step) / rate);
    }
    var speeds = w.slice(-SPEED_WINDOW).map(function (q) { return q.samples_per_sec; })
      .filter(function (v) { return v != null && isFinite(v); });
    if (speeds.length) out.speed = speeds.reduce(function (a, b) { return a + b; }, 0) / speeds.length;
    return out;
  }

  function renderProgress() {
    var p = state.progress;
    // Throughput and ETA describe training: hidden whenever the job is not running.
    var running = state.status === "running";
    var speedStat = $("throughput-stat");
    if (speedStat) speedStat.hidden = !running;
    var cost = $("cost");
    if (cost && state.cost != null) cost.textContent = money(state.cost);
    renderBudget();
    if (!p) return;
    var bar = $("bar");
    if (bar) bar.style.width = Math.min(100, Math.max(0, p.percent || 0)) + "%";
    var track = $("bar-track");
    if (track) {
      track.setAttribute("role", "progressbar");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", String(p.percent || 0));
    }
    var text = $("progress-text");
    if (text) {
      text.className = "small";
      text.textContent = "";
      var strong = document.createElement("strong");
      strong.textContent = "Step " + p.step + " of " + p.total_steps;
      text.appendChild(strong);
      var rest = " (" + Number(p.percent || 0).toFixed(1) + " %)";
      if (p.loss != null) rest += " · loss " + Number(p.loss).toFixed(4);
      var sm = running ? smoothed() : null;
      var eta = running ? etaText(sm && sm.eta != null ? sm.eta : p.eta_seconds) : "";
      if (eta) rest += " · " + eta;
      text.appendChild(document.createTextNode(rest));
    }
    var traffic = $("traffic"), trafficEl = $("traffic-text");
    if (traffic && trafficEl && state.traffic && state.traffic.ddp) {
      trafficEl.textContent = trafficText(state.traffic);
      traffic.hidden = false;
    }
    var speed = $("throughput");
    var rate = running ? (smoothed().speed || p.samples_per_sec) : null;
    if (speed) speed.textContent = rate ? group(String(Math.round(rate))) : "—";
    var metric = $("metric"), metricName = $("metric-name");
    if (metric && p.metric) metric.textContent = metricText(p.metric);
    if (metricName && p.metric) metricName.textContent = p.metric.name;
  }

  // Follow on: every new line scrolls into view. Off: the reader's position stays put while
  // lines arrive (rewriting the text would otherwise move it).
  function renderLogs() {
    var pre = $("logs");
    if (!pre || !state.logs.length) return;
    var kept = pre.scrollTop;
    var follow = $("log-follow");
    var filter = $("log-filter"), q = filter ? filter.value.toLowerCase() : "";
    pre.textContent = (q ? state.logs.filter(function (x) { return x.toLowerCase().indexOf(q) >= 0; })
                         : state.logs).join("\n");
    pre.scrollTop = !follow || follow.checked ? pre.scrollHeight : kept;
    pre.setAttribute("data-filled", "1");
  }

  function renderChart() {
    if (!state.points.length || !window.Chart) return;
    var box = $("chart-box"), empty = $("chart-empty");
    if (box) box.classList.add("has-data");
    if (empty) empty.hidden = true;
    if (!chart) chart = makeChart();
    if (!chart) return;
    var loss = [], speed = [];
    for (var i = 0; i < state.points.length; i++) {
      var p = state.points[i];
      if (p.loss != null) loss.push({ x: p.step, y: p.loss });
      if (p.samples_per_sec != null) speed.push({ x: p.step, y: p.samples_per_sec });
    }
    chart.data.datasets[0].data = loss;
    chart.data.datasets[1].data = speed;
    var total = state.points[state.points.length - 1].total_steps;
    chart.options.scales.x.suggestedMax = total || undefined;
    chart.update("none");
  }

  function makeChart() {
    var canvas = $("chart");
    if (!canvas) return null;
    var css = getComputedStyle(document.documentElement);
    var accent = css.getPropertyValue("--accent").trim() || "#0f766e";
    var violet = css.getPropertyValue("--violet").trim() || "#6d28d9";
    var muted = css.getPropertyValue("--muted").trim() || "#64748b";
    var line = css.getPropertyValue("--line").trim() || "#e2e8f0";
    window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    window.Chart.defaults.color = muted;
    return new window.Chart(canvas, {
      type: "line",
      data: { datasets: [
        { label: "loss", data: [], yAxisID: "y", borderColor: accent, backgroundColor: accent,
          borderWidth: 2, pointRadius: 0, tension: 0.2 },
        { label: "samples/s", data: [], yAxisID: "y1", borderColor: violet, backgroundColor: violet,
          borderWidth: 1.5, borderDash: [4, 3], pointRadius: 0, tension: 0.2 }
      ] },
      options: {
        animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { display: false },
          decimation: { enabled: true, algorithm: "lttb", samples: 600 },
          tooltip: { callbacks: { title: function (items) { return items.length ? "Step " + items[0].parsed.x : ""; } } }
        },
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "step" }, grid: { color: line } },
          y: { position: "left", title: { display: true, text: "loss" }, grid: { color: line } },
          y1: { position: "right", beginAtZero: true, title: { display: true, text: "samples/s" },
                grid: { drawOnChartArea: false } }
        }
      }
    });
  }

  // --- timeline ---------------------------------------------------------------------------
  function eventKey(at, reason, to) { return (Date.parse(at) || 0) + "|" + reason + "|" + (to || ""); }
  var seenEvents = {}, lastEventTime = 0;
  document.querySelectorAll('[data-live="timeline"] > li[data-at]').forEach(function (li) {
    var t = Date.parse(li.getAttribute("data-at")) || 0;
    seenEvents[eventKey(li.getAttribute("data-at"), li.getAttribute("data-reason"), li.getAttribute("data-to"))] = true;
    if (t > lastEventTime) lastEventTime = t;
  });

  function addEvent(e) {
    if (ENDINGS.indexOf(e.to_status) >= 0) state.endedAs = e.to_status;
    var key = eventKey(e.at, e.reason, e.to_status);
    var t = Date.parse(e.at) || 0;
    if (seenEvents[key] || t < lastEventTime) return;
    seenEvents[key] = true;
    lastEventTime = t;
    var list = $("timeline");
    if (!list) return;
    var empty = $("timeline-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    li.className = "tl-item tl-new";
    li.setAttribute("data-at", e.at);
    li.setAttribute("data-reason", e.reason);
    li.setAttribute("data-to", e.to_status || "");
    var tone = e.to_status ? (TONES[e.to_status] || "neutral") : "neutral";
    var dot = document.createElement("span");
    dot.className = "tl-dot tone-" + tone;
    var body = document.createElement("div");
    var head = document.createElement("div");
    head.className = "tl-head";
    var chip = document.createElement("span");
    chip.className = e.to_status ? "chip chip-" + tone : "chip";
    chip.textContent = e.to_status || "note";
    var reason = document.createElement("code");
    reason.className = "reason";
    reason.textContent = e.reason;
    var when = document.createElement("span");
    when.className = "sub";
    var time = document.createElement("time");
    time.setAttribute("datetime", e.at);
    time.textContent = t ? timeFmt.format(new Date(t)) : e.at;
    when.appendChild(time);
    head.appendChild(chip); head.appendChild(reason); head.appendChild(when);
    var msg = document.createElement("p");
    msg.textContent = e.message;
    body.appendChild(head); body.appendChild(msg);
    li.appendChild(dot); li.appendChild(body);
    list.appendChild(li);
  }

  // --- the server-rendered progress panel (machines, result, artifact link) ----------------
  function refreshPartial(now) {
    var panel = document.getElementById("job-progress");
    var url = panel && panel.getAttribute("data-progress-url");
    if (!url) return;
    // One fetch at a time, but never drop one: a panel fetched just before the next status
    // (cancelled, then settled) would leave the old status's sentence up for good.
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    lastPartialRefresh = Date.now();
    setTimeout(function () {
      fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var tpl = document.createElement("template");
          tpl.innerHTML = html.trim();
          var fresh = tpl.content.querySelector("#job-progress");
          var current = document.getElementById("job-progress");
          if (!fresh || !current) return;
          fresh.querySelectorAll("time[data-local]").forEach(function (el) {
            var d = new Date(el.getAttribute("datetime"));
            if (!isNaN(d)) { el.textContent = timeFmt.format(d); el.removeAttribute("data-local"); }
          });
          current.replaceWith(fresh);
          state.summary = fresh.getAttribute("data-summary");
          state.summaryStatus = fresh.getAttribute("data-status");
          // The escrow panel comes along: replaced when its status moved (funded, settled).
          var escrowNew = tpl.content.querySelector("#escrow");
          var escrowOld = document.getElementById("escrow");
          if (escrowNew && escrowOld && escrowNew.getAttribute("data-escrow-status") !==
              escrowOld.getAttribute("data-escrow-status")) escrowOld.replaceWith(escrowNew);
          render(); // the live numbers may be newer than the panel
        })
        .catch(function () {})
        .then(function () {
          refreshing = false;
          if (refreshAgain) { refreshAgain = false; refreshPartial(true); }
        });
    }, now ? 0 : 250);
  }

  // --- the socket -------------------------------------------------------------------------
  function setIndicator(mode, text) {
    var el = $("indicator");
    if (!el) return;
    el.hidden = false;
    el.setAttribute("data-state", mode);
    el.textContent = text;
  }

  function socketUrl() {
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + location.host + root.getAttribute("data-ws-path");
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  }

  function resync() {
    synced = false;
    send({ type: "resync", after_seq: state.lastSeq, after_log_seq: state.lastLogSeq });
  }

  function handle(msg) {
    if (msg.type === "metrics") applyPoints(msg.points || [], false);
    else if (msg.type === "logs") applyLogs(msg.lines || [], false);
    else if (msg.type === "job") applySnapshot(msg.job);
  }

  function onMessage(ev) {
    var msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "history") {
      var metrics = msg.metrics || [];
      applyPoints(metrics, true);
      applyLogs(msg.logs || [], true);
      applySnapshot(msg.job);
      if (metrics.length >= HISTORY_LIMIT) { resync(); scheduleRender(); return; } // more to fetch
      synced = true;
      backoff = BACKOFF_MIN;
      setIndicator("live", "Live");
      // Live messages that came while the history was on its way, in order; repeats drop by seq.
      var pending = queue; queue = [];
      for (var i = 0; i < pending.length && synced; i++) handle(pending[i]);
      scheduleRender();
      return;
    }
    if (msg.type !== "metrics" && msg.type !== "logs" && msg.type !== "job") return;
    if (!synced) { queue.push(msg); return; }
    handle(msg);
    scheduleRender();
  }

  function connect() {
    clearTimeout(retryTimer);
    synced = false;
    queue = [];
    var socket;
    try { socket = new WebSocket(socketUrl()); } catch (e) { return scheduleReconnect(); }
    ws = socket;
    socket.onopen = function () {
      send({ type: "resync", after_seq: state.lastSeq, after_log_seq: state.lastLogSeq });
    };
    socket.onmessage = onMessage;
    socket.onclose = function (ev) {
      if (ws !== socket) return;
      ws = null;
      synced = false;
      if (ev.code === 4403) { setIndicator("off", "Live updates not available"); return; }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    var wait = backoff;
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
    setIndicator("reconnecting", "Reconnecting…");
    retryTimer = setTimeout(connect, wait);
  }

  // A sleeping laptop or a network change: try at once when the page comes back.
  var logFilter = $("log-filter");
  if (logFilter) logFilter.addEventListener("input", renderLogs);
  var logFollow = $("log-follow");
  if (logFollow) logFollow.addEventListener("change", renderLogs);
  window.addEventListener("online", function () { if (!ws) { backoff = BACKOFF_MIN; connect(); } });

  setIndicator("connecting", "Connecting…");
  connect();

  // For tests and debugging: what the page has applied.
  window.jobLive = { state: state, isSynced: function () { return synced; } };
})();
