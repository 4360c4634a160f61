/* ComputeMesh: the little JavaScript the pages need (htmx does the rest).
   - <time datetime data-local> shows in the browser's local time zone;
   - datetime-local inputs are wall-clock local time: forms send the zone offset
     (minutes, as getTimezoneOffset gives) in a hidden tz_offset field;
   - copy buttons;
   - the narrow-screen menu button and the folding offer filters. */
(function () {
  "use strict";
  var fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function localizeTimes(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      el.title = d.toISOString().replace(".000Z", "Z") + " (UTC)";
      el.textContent = fmt.format(d);
      el.removeAttribute("data-local");
    });
  }

  function pad(n) { return String(n).padStart(2, "0"); }
  function toLocalInput(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
      "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  function fillDefaults(root) {
    (root || document).querySelectorAll("input[data-utc-default]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-utc-default"));
      if (!isNaN(d)) el.value = toLocalInput(d);
      el.removeAttribute("data-utc-default");
    });
  }

  // The offset that applies at the entered date (it differs across DST changes).
  function updateOffsets(form) {
    var hidden = form.querySelector("input[data-tz-offset]");
    if (!hidden) return;
    var when = new Date();
    var inputs = form.querySelectorAll('input[type="datetime-local"]');
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value) { when = new Date(inputs[i].value); break; }
    }
    hidden.value = String((isNaN(when) ? new Date() : when).getTimezoneOffset());
  }
  function updateAllOffsets() {
    document.querySelectorAll("form").forEach(updateOffsets);
  }

  // Capture phase: runs before htmx reads the form on the same event.
  ["change", "input", "submit"].forEach(function (type) {
    document.addEventListener(type, function (e) {
      var form = e.target.closest ? e.target.closest("form") : null;
      if (form) updateOffsets(form);
    }, true);
  });

  document.addEventListener("click", function (e) {
    var btn = e.target.closest("[data-copy]");
    if (!btn) return;
    var el = document.querySelector(btn.getAttribute("data-copy"));
    if (el && navigator.clipboard) {
      navigator.clipboard.writeText(el.textContent.trim()).then(function () {
        btn.textContent = "Copied";
        setTimeout(function () { btn.textContent = "Copy"; }, 1500);
      });
    }
  });

  // The narrow-screen menu: the button says whether the menu is open (aria-expanded);
  // Escape closes it and gives the focus back to the button.
  function setMenu(btn, open) {
    btn.setAttribute("aria-expanded", open ? "true" : "false");
  }
  document.addEventListener("click", function (e) {
    var btn = e.target.closest ? e.target.closest("[data-nav-toggle]") : null;
    if (btn) setMenu(btn, btn.getAttribute("aria-expanded") !== "true");
  });
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    var btn = document.querySelector('[data-nav-toggle][aria-expanded="true"]');
    if (!btn) return;
    setMenu(btn, false);
    btn.focus();
  });

  // Filters fold away on a narrow screen, so that the first results are in view.
  function foldFilters() {
    if (!window.matchMedia || !window.matchMedia("(max-width: 860px)").matches) return;
    document.querySelectorAll("details[data-fold-narrow]").forEach(function (d) {
      d.removeAttribute("open");
    });
  }

  // The offers page swaps only its results: mark the filters that the server refused
  // (the results pane names them in data-error-fields) and unmark the others.
  function markFilterErrors() {
    var form = document.getElementById("offer-filters");
    if (!form) return;
    var box = document.querySelector("[data-error-fields]");
    var bad = box ? box.getAttribute("data-error-fields").split(" ") : [];
    form.querySelectorAll("input, select").forEach(function (el) {
      if (el.type === "hidden") return;
      var wrong = bad.indexOf(el.name) !== -1;
      if (wrong) el.setAttribute("aria-invalid", "true"); else el.removeAttribute("aria-invalid");
      var field = el.closest(".field");
      if (field) field.classList.toggle("has-error", wrong || field.querySelector("[aria-invalid]") !== null);
    });
  }
  document.addEventListener("htmx:afterSettle", markFilterErrors);

  // A table that scrolls sideways in its box must be reachable from the keyboard (WCAG 2.1.1):
  // the box takes the focus, named after its table's caption or the heading above it.
  function focusableScrollBoxes(root) {
    (root || document).querySelectorAll(".table-wrap").forEach(function (box) {
      var scrolls = box.scrollWidth > box.clientWidth + 1;
      if (!scrolls) {
        if (box.hasAttribute("data-scroll-focus")) {
          ["tabindex", "role", "aria-label", "data-scroll-focus"].forEach(function (a) { box.removeAttribute(a); });
        }
        return;
      }
      if (box.hasAttribute("tabindex")) return;
      var heading = box.querySelector("caption") || box.closest("section, .card");
      heading = heading && (heading.tagName === "CAPTION" ? heading : heading.querySelector("h2, h3"));
      box.setAttribute("tabindex", "0");
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", (heading ? heading.textContent.trim() + ": " : "") + "table, scrolls sideways");
      box.setAttribute("data-scroll-focus", "");
    });
  }
  window.addEventListener("resize", function () { focusableScrollBoxes(document); });

  function init(root) { localizeTimes(root); fillDefaults(root); updateAllOffsets(); focusableScrollBoxes(document); }
  document.addEventListener("DOMContentLoaded", function () { foldFilters(); init(document); });
  document.addEventListener("htmx:afterSettle", function (e) { init(e.target); });
})();
