// Live dashboards: "My jobs" follows job status and progress, "My nodes" follows nodes
// going online and offline, the offers table follows free GPUs and presence. The pages are
// complete without it; this only keeps them current. Reconnects with backoff.
(function () {
  "use strict";

  // `name` marks the body (data-live-<name>="open" or "closed") while its socket is open:
  // the server joins the socket to its group before accepting it, so from "open" on every
  // change is sent to this page (the browser tests wait for it rather than for time).
  function connect(name, path, onMessage) {
    var delay = 1000;
    function open() {
      var proto = location.protocol === "https:" ? "wss://" : "ws://";
      var ws = new WebSocket(proto + location.host + path);
      ws.onopen = function () {
        delay = 1000;
        document.body.setAttribute("data-live-" + name, "open");
      };
      ws.onmessage = function (e) {
        try { onMessage(JSON.parse(e.data)); } catch (err) { /* ignore a bad frame */ }
      };
      ws.onclose = function () {
        document.body.setAttribute("data-live-" + name, "closed");
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
  }

  // As the `money` filter (marketplace/money.py `amount`): at least 2, at most 6 decimals.
  function money(value) {
    var n = Number(value);
    if (!isFinite(n)) return String(value);
    var parts = n.toFixed(6).replace(/0+$/, "").split(".");
    var frac = parts[1] || "";
    while (frac.length < 2) frac += "0";
    return parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, ",") + "." + frac;
  }

  function chip(status) {
    var span = document.createElement("span");
    span.className = "chip";
    span.textContent = status;
    return span;
  }

  // A job the page does not show yet (just submitted): its row is asked of the server,
  // under the page's filters (204 when it does not match them), and put first.
  var fetching = {};
  function addJobRow(job) {
    var body = document.querySelector("tbody[data-live-jobs]");
    if (!body || fetching[job.id]) return;
    fetching[job.id] = true;
    var url = body.getAttribute("data-live-jobs").replace("/0/", "/" + Number(job.id) + "/") +
      "?" + new URLSearchParams({status: body.dataset.status || "", q: body.dataset.q || ""});
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.status === 200 ? r.text() : ""; })
      .then(function (html) {
        if (!html || document.querySelector('tr[data-job-id="' + job.id + '"]')) return;
        var t = document.createElement("template");
        t.innerHTML = html.trim();
        var row = t.content.querySelector("tr[data-job-id]");
        if (!row) return;
        body.insertBefore(row, body.firstChild);
        var table = body.closest("[data-testid=jobs-table]");
        if (table) table.hidden = false;
        document.querySelectorAll("[data-testid=no-jobs], [data-testid=no-match]").forEach(function (e) {
          e.hidden = true;
        });
      })
      .catch(function () { /* the next message or a reload shows it */ })
      .then(function () { delete fetching[job.id]; });
  }

  // `onlyNewer`: from the summary sent on (re)connecting, add only jobs newer than every
  // row shown (submitted while the page loaded), not each older one the filters left out.
  function newestShown() {
    var ids = Array.prototype.map.call(document.querySelectorAll("tr[data-job-id]"), function (r) {
      return Number(r.getAttribute("data-job-id"));
    });
    return ids.length ? Math.max.apply(null, ids) : 0;
  }

  function jobRow(job, onlyNewer) {
    var row = document.querySelector('tr[data-job-id="' + job.id + '"]');
    if (!row) {
      if (!onlyNewer || job.id > newestShown()) addJobRow(job);
      return;
    }
    var cell = row.querySelector(".js-status");
    // A cancelled or failed job that then settles or is refunded keeps saying how it ended.
    if (cell && ["cancelled", "failed", "completed"].indexOf(job.status) >= 0) {
      cell.setAttribute("data-ended-as", job.status);
    }
    var ended = cell ? cell.getAttribute("data-ended-as") : "";
    var key = (job.status === "settled" || job.status === "refunded") &&
      (ended === "cancelled" || ended === "failed") ? ended : job.status;
    if (cell && cell.querySelector(".chip") && cell.querySelector(".chip").textContent.trim() !== key) {
      cell.replaceChildren(chip(key));
    }
    var cost = row.querySelector(".js-cost");
    if (cost && job.cost_so_far) cost.textContent = money(job.cost_so_far);
    var warning = row.querySelector(".js-budget-warning");
    if (warning && job.budget_warning !== undefined) warning.hidden = !job.budget_warning;
    var bar = row.querySelector(".js-progress span");
    if (bar && job.percent !== null && job.percent !== undefined) {
      bar.style.width = job.percent + "%";
    }
  }

  function nodeRow(node) {
    var row = document.querySelector('tr[data-node-id="' + node.id + '"]');
    if (!row) return;
    var cell = row.querySelector(".js-status");
    if (cell) {
      var span = document.createElement("span");
      span.className = "status " + (node.status === "online" ? "status-ok" : "status-neutral");
      span.textContent = node.status_display;
      cell.replaceChildren(span);
    }
    var bench = row.querySelector(".js-benchmark");
    if (bench && node.benchmark_tflops) bench.textContent = node.benchmark_tflops + " TFLOP/s";
    var hb = row.querySelector(".js-heartbeat");
    if (hb && node.last_heartbeat_at) {
      hb.textContent = new Date(node.last_heartbeat_at).toLocaleString();
    }
  }

  function offerRow(offer) {
    var row = document.querySelector('tr[data-offer-id="' + offer.id + '"]');
    if (!row) return;
    var free = row.querySelector(".js-free");
    if (free) free.textContent = offer.gpus_available;
    var online = row.querySelector(".js-online");
    if (online) {
      var span = online.querySelector(".status");
      if (span) {
        span.className = "status " + (offer.online ? "status-ok" : "status-neutral");
        span.textContent = offer.online ? "Online" : "Offline";
      }
      // Free GPUs only while the machine is online; offline, its last heartbeat.
      var avail = online.querySelector(".js-available");
      if (avail) avail.hidden = !offer.online;
      var note = online.querySelector(".js-offline-note");
      if (note) note.hidden = !!offer.online;
    }
    row.classList.toggle("is-paused", offer.status !== "active");
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("tr[data-job-id], tr[data-node-id], tbody[data-live-jobs]") &&
        document.body.dataset.authenticated) {
      connect("dashboard", "/ws/dashboard/", function (m) {
        if (m.type === "job") jobRow(m.job);
        if (m.type === "node") nodeRow(m.node);
        if (m.type === "summary") {
          (m.jobs || []).forEach(function (j) { jobRow(j, true); });
          (m.nodes || []).forEach(nodeRow);
        }
      });
    }
    if (document.querySelector("tr[data-offer-id]")) {
      connect("market", "/ws/market/", function (m) { if (m.type === "offer") offerRow(m.offer); });
    }
  });
})();
