// Live dashboards: "My jobs" follows job status and progress, "My nodes" follows nodes
// going online and offline, the offers table follows free GPUs and presence, and the header
// balance and the Account page follow the organization's money. The pages are complete
// without it; this only keeps them current. Reconnects with backoff.
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

  // A filtered list (My jobs by status): a row whose job changed status is asked of the
  // server again under the filters; 204 means it no longer matches, and it leaves the list.
  function recheckJobRow(job, row) {
    var body = document.querySelector("tbody[data-live-jobs]");
    if (!body || !body.dataset.status || fetching[job.id]) return;
    fetching[job.id] = true;
    var url = body.getAttribute("data-live-jobs").replace("/0/", "/" + Number(job.id) + "/") +
      "?" + new URLSearchParams({status: body.dataset.status, q: body.dataset.q || ""});
    fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) {
        if (r.status !== 204 || !row.isConnected) return;
        row.remove();
        if (!body.querySelector("tr[data-job-id]")) {
          var table = body.closest("[data-testid=jobs-table]");
          if (table) table.hidden = true;
          var none = document.querySelector("[data-testid=no-match]");
          if (none) none.hidden = false;
        }
      })
      .catch(function () { /* the next message or a reload shows it */ })
      .then(function () { delete fetching[job.id]; });
  }

  function jobRow(job, onlyNewer) {
    var row = document.querySelector('tr[data-job-id="' + job.id + '"]');
    if (!row) {
      if (!onlyNewer || job.id > newestShown()) addJobRow(job);
      return;
    }
    if (row.getAttribute("data-status") !== job.status) {
      row.setAttribute("data-status", job.status);
      recheckJobRow(job, row);
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

  // The organization's money moved (funding, settlement, refund, faucet): the header balance
  // and the Account page's balances, history and statements are read again from the server
  // (the message carries no amount). Several messages in a burst make one refresh.
  var accountTimer = null;
  function accountChanged() {
    clearTimeout(accountTimer);
    accountTimer = setTimeout(refreshAccount, 250);
  }

  function refreshAccount() {
    var pill = document.querySelector("[data-testid=header-balance][data-balance-url]");
    if (pill && window.htmx) {
      window.htmx.ajax("GET", pill.getAttribute("data-balance-url"), {target: pill, swap: "outerHTML"});
    }
    var parts = document.querySelectorAll("[data-live-account]");
    if (!parts.length) return;
    fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        parts.forEach(function (part) {
          var name = part.getAttribute("data-live-account");
          var next = fresh.querySelector('[data-live-account="' + name + '"]');
          if (next) part.replaceWith(document.importNode(next, true));
        });
        var n = Number(document.body.getAttribute("data-account-refreshed") || 0) + 1;
        document.body.setAttribute("data-account-refreshed", String(n));
      })
      .catch(function () { /* the next change or a reload shows it */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var lists = document.querySelector("tr[data-job-id], tr[data-node-id], tbody[data-live-jobs]");
    var money = document.querySelector("[data-testid=header-balance], [data-live-account]");
    if ((lists || money) && document.body.dataset.authenticated) {
      // Without a list to fill, no summary is asked for: the socket only carries changes.
      connect("dashboard", "/ws/dashboard/" + (lists ? "" : "?summary=0"), function (m) {
        if (m.type === "account") accountChanged();
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
