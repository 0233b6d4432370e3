// tern's web UI: the few things that need a script. Every page works
// without it (forms post and redirect); with it, actions show their status
// live, state tables refresh when the agent reports, tabs switch in place
// and copy buttons copy. Polling is small JSON, only while the page is
// visible. No inline handlers: the Content-Security-Policy forbids them.
(function () {
  "use strict";

  var FINAL = { ok: 1, failed: 1, rejected: 1, cancelled: 1 };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, status: r.status, json: j }; });
    });
  }

  function sleep(ms) { return new Promise(function (res) { setTimeout(res, ms); }); }

  // ----- live command status -----

  var liveEnv = null; // the environment page's refresher, when there is one

  function statusSpan(status) { return el("span", "state " + status, status); }

  function describe(c, label) {
    var t = label || c.target || "";
    if (/^[0-9a-f]{64}$/.test(t)) t = t.slice(0, 12);
    return c.action + " " + t;
  }

  // `row.dataset.label`: the name the operator clicked (the API stores the
  // id it resolved).
  function renderCommand(row, c) {
    row.textContent = "";
    row.dataset.status = c.status;
    row.appendChild(el("span", "", describe(c, row.dataset.label) + ": "));
    row.appendChild(statusSpan(c.status));
    if (c.error) row.appendChild(el("span", "error", " " + c.error));
    if (c.output !== undefined && c.output !== null) {
      var pre = el("pre", "output", c.output || "(no output)");
      row.appendChild(pre);
    }
  }

  // Follows one command until it ends; `row` shows it.
  function track(id, row, onStatus) {
    var tries = 0;
    function step() {
      if (tries++ > 600) return;
      if (document.hidden) { setTimeout(step, 2000); return; }
      getJSON("/api/commands/" + id).then(function (r) {
        if (!r.ok) { row.textContent = "Command " + id + ": " + (r.json && r.json.error || r.status); return; }
        if (row) renderCommand(row, r.json);
        if (onStatus) onStatus(r.json);
        if (FINAL[r.json.status]) {
          if (liveEnv) liveEnv.soon();
          return;
        }
        setTimeout(step, 2000);
      }, function () { setTimeout(step, 5000); });
    }
    step();
  }

  // A form that asks first (delete, reset): data-confirm holds the question.
  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (!f.dataset || !f.dataset.confirm || (f.classList && f.classList.contains("cmd"))) return;
    if (!window.confirm(f.dataset.confirm)) ev.preventDefault();
  });

  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (!f.classList || !f.classList.contains("cmd")) return;
    if (f.dataset.confirm && !window.confirm(f.dataset.confirm)) { ev.preventDefault(); return; }
    ev.preventDefault();
    var live = document.getElementById("live");
    var row = el("div", "live-cmd", "Sending…");
    var target = f.querySelector('input[name="target"]');
    if (target) row.dataset.label = target.value;
    live.insertBefore(row, live.firstChild);
    var button = f.querySelector("button");
    if (button) button.disabled = true;
    // f.action would be the hidden input named "action", not the URL.
    fetch(f.getAttribute("action"), {
      method: "POST", credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(f)).toString()
    }).then(function (r) {
      return r.json().then(function (j) {
        if (button) button.disabled = false;
        if (!r.ok) { row.textContent = ""; row.appendChild(el("span", "error", j.error || ("error " + r.status))); return; }
        renderCommand(row, j);
        track(j.id, row);
      });
    }, function () {
      if (button) button.disabled = false;
      row.textContent = "";
      row.appendChild(el("span", "error", "The server could not be reached; nothing was queued."));
    });
  });

  // ----- the environment page: refresh the table when the state changes -----

  function envRefresher(box) {
    var id = box.dataset.liveEnv, seq = box.dataset.seq, tab = box.dataset.tab;
    var timer = null;
    function refreshTable() {
      return fetch("/environments/" + id + "/part?tab=" + encodeURIComponent(tab), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) document.getElementById("state-table").innerHTML = html; });
    }
    function check() {
      if (document.hidden) { schedule(10000); return; }
      getJSON("/api/environments/" + id).then(function (r) {
        if (r.ok) {
          var asOf = document.getElementById("as-of");
          if (asOf && r.json.snapshot_age_s !== null && r.json.snapshot_age_s !== undefined) {
            var strong = asOf.querySelector("strong");
            if (strong) strong.textContent = ago(r.json.snapshot_age_s);
          }
          if (String(r.json.seq) !== String(seq)) { seq = r.json.seq; refreshTable(); }
        }
        schedule(10000);
      }, function () { schedule(20000); });
    }
    function schedule(ms) { clearTimeout(timer); timer = setTimeout(check, ms); }
    schedule(10000);
    return { soon: function () { schedule(1500); setTimeout(check, 5000); } };
  }

  function ago(s) {
    if (s < 10) return "just now";
    var n, u;
    if (s < 60) { n = s; u = "second"; } else if (s < 3600) { n = Math.floor(s / 60); u = "minute"; }
    else if (s < 86400) { n = Math.floor(s / 3600); u = "hour"; } else { n = Math.floor(s / 86400); u = "day"; }
    return n + " " + u + (n === 1 ? "" : "s") + " ago";
  }

  // ----- tabs that switch in place (the wizard's Linux / Windows) -----

  function setupTabs(list) {
    var tabs = Array.prototype.slice.call(list.querySelectorAll('[role="tab"]'));
    function select(t) {
      tabs.forEach(function (x) {
        var on = x === t;
        x.setAttribute("aria-selected", on ? "true" : "false");
        x.tabIndex = on ? 0 : -1;
        var panel = document.getElementById(x.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
      });
    }
    tabs.forEach(function (t, i) {
      t.addEventListener("click", function () { select(t); });
      t.addEventListener("keydown", function (e) {
        var j = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : -1;
        if (j < 0 && e.key !== "ArrowLeft") return;
        var next = tabs[(j + tabs.length) % tabs.length];
        next.focus(); select(next); e.preventDefault();
      });
    });
    select(tabs.filter(function (t) { return t.getAttribute("aria-selected") === "true"; })[0] || tabs[0]);
  }

  // ----- copy buttons -----

  function setupCopy(b) {
    b.hidden = false;
    b.addEventListener("click", function () {
      var src = document.getElementById(b.dataset.copy);
      var text = src ? src.textContent : "";
      var done = function () { var t = b.textContent; b.textContent = "Copied"; setTimeout(function () { b.textContent = t; }, 1500); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(src); });
      } else { selectText(src); }
    });
  }

  function selectText(node) {
    if (!node) return;
    var r = document.createRange(); r.selectNodeContents(node);
    var s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
  }

  // ----- interval pickers: "custom" shows its seconds field -----

  function setupInterval(sel) {
    var custom = document.getElementById(sel.dataset.custom);
    var label = custom && custom.id ? document.querySelector('label[for="' + custom.id + '"]') : null;
    function sync() {
      var off = sel.value !== "custom";
      if (custom) custom.hidden = off;
      if (label) label.hidden = off;
    }
    sel.addEventListener("change", sync); sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.querySelector("[data-live-env]");
    if (box) liveEnv = envRefresher(box);
    Array.prototype.forEach.call(document.querySelectorAll("[data-command-id]"), function (n) {
      var id = n.dataset.commandId;
      var target = n.classList.contains("live-cmd") ? n : null;
      var status = n.querySelector(".status");
      track(id, target, function (c) {
        if (status) {
          status.textContent = "";
          status.appendChild(statusSpan(c.status));
          if (c.error) status.appendChild(el("span", "error", " " + c.error));
        }
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll('[role="tablist"]'), setupTabs);
    Array.prototype.forEach.call(document.querySelectorAll("button[data-copy]"), setupCopy);
    Array.prototype.forEach.call(document.querySelectorAll("select[data-custom]"), setupInterval);
  });
})();

// ----- parts of a page that refresh themselves -----
// An element with data-refresh-url is re-filled from that URL (an HTML
// fragment the server renders) every data-refresh-every seconds (3 by
// default) while the page is visible, as long as its content holds an
// element marked data-pending (something is still under way). A failed
// answer, or one that was redirected (the session ended), stops it.
// Nothing is replaced while the focus is inside.
(function () {
  "use strict";

  function setupRefresh(box) {
    var every = (parseFloat(box.dataset.refreshEvery) || 3) * 1000;
    var last = null;
    function pending() { return box.querySelector("[data-pending]") !== null; }
    function step() {
      if (!pending()) return;
      if (document.hidden) { setTimeout(step, every); return; }
      fetch(box.dataset.refreshUrl, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          // Not under a keyboard user's focus: wait until it leaves.
          if (box.contains(document.activeElement)) { setTimeout(step, every); return; }
          if (html !== last) { last = html; box.innerHTML = html; }
          setTimeout(step, every);
        }, function () { setTimeout(step, every * 5); });
    }
    setTimeout(step, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh-url]"), setupRefresh);
  });
})();
