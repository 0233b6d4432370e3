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

  // Every answer is checked: a redirect (to the login page, the session
  // ended) or a body that is not JSON is an error with a reason, never an
  // exception that leaves a row "Sending…".
  var SESSION_ENDED = "Your session ended: log in again.";

  function getJSON(url, etag) {
    var headers = { Accept: "application/json" };
    if (etag) headers["If-None-Match"] = etag;
    return fetch(url, { credentials: "same-origin", headers: headers }).then(function (r) {
      if (r.status === 304) return { ok: true, status: 304, json: null };
      var type = r.headers.get("Content-Type") || "";
      if (r.redirected || r.status === 401 || type.indexOf("application/json") !== 0) {
        return { ok: false, status: r.status, json: { error: r.redirected || r.status === 401 ? SESSION_ENDED : "the server answered " + r.status } };
      }
      return r.json().then(function (j) { return { ok: r.ok, status: r.status, json: j }; },
        function () { return { ok: false, status: r.status, json: { error: "the server answered " + r.status } }; });
    });
  }

  // ----- live command status -----

  var liveEnv = null; // the environment page's refresher, when there is one

  function statusSpan(status) { return el("span", "state " + status, status); }

  function describe(c, label) {
    var t = label || c.target || "";
    if (/^[0-9a-f]{64}$/.test(t)) t = t.slice(0, 12);
    return c.action + " " + t;
  }

  function loginLink() {
    var a = el("a", "", "Log in");
    a.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    return a;
  }

  function showError(row, message) {
    var body = row.querySelector(".body") || row;
    body.textContent = "";
    body.appendChild(el("span", "error", message + " "));
    if (message === SESSION_ENDED) body.appendChild(loginLink());
  }

  // `row.dataset.label`: the name the operator clicked (the API stores the
  // id it resolved).
  function renderCommand(row, c) {
    var body = row.querySelector(".body") || row;
    body.textContent = "";
    row.dataset.status = c.status;
    body.appendChild(el("span", "", describe(c, row.dataset.label) + ": "));
    body.appendChild(statusSpan(c.status));
    if (c.error) body.appendChild(el("span", "error", " " + c.error));
    if (c.action === "container.logs" && c.status === "ok") {
      body.appendChild(el("pre", "output", c.output ? c.output : "(no output)"));
    }
  }

  // A row of the live panel (fixed at the bottom of the window, so that
  // what a click started is seen wherever the button was), with a button
  // that dismisses it.
  function liveRow(label) {
    var live = document.getElementById("live");
    var row = el("div", "live-cmd");
    if (label) row.dataset.label = label;
    var body = el("div", "body", "Sending…");
    var close = el("button", "small dismiss", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", function () { row.remove(); });
    row.appendChild(body);
    row.appendChild(close);
    live.insertBefore(row, live.firstChild);
    // At most 5 rows: the oldest go.
    while (live.children.length > 5) live.removeChild(live.lastChild);
    return row;
  }

  // Follows one command until it ends. Polls every 2 s while it moves,
  // backing off to 30 s while it does not (a host offline for hours), and
  // gives up after 15 minutes (the history on a reload tells the rest).
  function track(id, row, onStatus) {
    var delay = 2000, last = null, started = Date.now();
    function step() {
      if (Date.now() - started > 15 * 60 * 1000) {
        if (row) row.querySelector(".body") && row.querySelector(".body").appendChild(el("span", "muted", " (reload to see later changes)"));
        return;
      }
      if (document.hidden) { setTimeout(step, delay); return; }
      getJSON("/api/commands/" + id).then(function (r) {
        if (!r.ok) { if (row) showError(row, "Command " + id + ": " + r.json.error); return; }
        if (row) renderCommand(row, r.json);
        if (onStatus) onStatus(r.json);
        if (FINAL[r.json.status]) {
          if (liveEnv) liveEnv.soon();
          return;
        }
        delay = r.json.status === last ? Math.min(delay * 1.5, 30000) : 2000;
        last = r.json.status;
        setTimeout(step, delay);
      }, function () { delay = Math.min(delay * 2, 30000); setTimeout(step, delay); });
    }
    step();
  }

  // The button pressed decides: a form may hold several (one per action).
  function submitted(ev) { return ev.submitter || null; }

  // A form that asks first (delete, reset): data-confirm, on the form or
  // on the button pressed, holds the question.
  document.addEventListener("submit", function (ev) {
    var f = ev.target, b = submitted(ev);
    var question = (b && b.dataset && b.dataset.confirm) || (f.dataset && f.dataset.confirm);
    if (question && !window.confirm(question)) { ev.preventDefault(); ev.stopImmediatePropagation(); }
  });

  document.addEventListener("submit", function (ev) {
    var f = ev.target, b = submitted(ev);
    if (ev.defaultPrevented || !f.classList || !f.classList.contains("cmd")) return;
    ev.preventDefault();
    if (b && b.getAttribute("aria-disabled") === "true") return;
    var target = f.querySelector('input[name="target"]');
    var row = liveRow(target ? target.value : "");
    var data = new FormData(f);
    if (b && b.name) data.set(b.name, b.value);
    // Not `disabled`: that would drop the keyboard focus.
    if (b) b.setAttribute("aria-disabled", "true");
    var done = function () { if (b) b.removeAttribute("aria-disabled"); };
    // f.action would be an input named "action", not the URL.
    fetch(f.getAttribute("action"), {
      method: "POST", credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(data).toString()
    }).then(function (r) {
      done();
      var type = r.headers.get("Content-Type") || "";
      if (r.redirected || type.indexOf("application/json") !== 0) {
        showError(row, r.redirected ? SESSION_ENDED : "The server refused it (" + r.status + "); nothing was queued. Reload the page.");
        return;
      }
      return r.json().then(function (j) {
        if (!r.ok) { showError(row, j.error || ("error " + r.status)); return; }
        renderCommand(row, j);
        track(j.id, row);
      });
    }).catch(function () {
      done();
      showError(row, "The server could not be reached; nothing was queued.");
    });
  });

  // ----- the environment page: refresh the table when the state changes -----

  // Checks the environment every 10 s while the page is visible, backing
  // off to 60 s while nothing changes; right after a command, sooner. The
  // table (an HTML fragment) is fetched only when the state's seq moved,
  // and not while the keyboard focus is in it.
  function envRefresher(box) {
    var id = box.dataset.liveEnv, seq = box.dataset.seq, tab = box.dataset.tab;
    var timer = null, delay = 10000;
    // Replaces the table; a keyboard user's focus goes back to the same
    // row's button of the same action, or the row's first button (Stop
    // became Start), rather than to the page's top.
    function refreshTable() {
      var table = document.getElementById("state-table");
      var focused = document.activeElement, rowName = null, action = null;
      if (focused && table.contains(focused)) {
        var tr = focused.closest("tr[data-name]");
        rowName = tr ? tr.dataset.name : null;
        action = focused.value || null;
      }
      return fetch("/environments/" + id + "/part?tab=" + encodeURIComponent(tab), { credentials: "same-origin" })
        .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          table.innerHTML = html;
          if (rowName === null) return;
          var rows = table.querySelectorAll("tr[data-name]"), row = null;
          for (var i = 0; i < rows.length; i++) if (rows[i].dataset.name === rowName) row = rows[i];
          if (!row) return;
          var again = null, buttons = row.querySelectorAll("button");
          for (var j = 0; j < buttons.length; j++) if (buttons[j].value === action) again = buttons[j];
          (again || buttons[0] || row).focus();
        });
    }
    function check() {
      if (document.hidden) { schedule(delay); return; }
      getJSON("/api/environments/" + id).then(function (r) {
        if (!r.ok) { if (r.json.error === SESSION_ENDED) return; schedule(60000); return; }
        var asOf = document.getElementById("as-of");
        if (asOf && r.json.snapshot_age_s !== null && r.json.snapshot_age_s !== undefined) {
          var strong = asOf.querySelector("strong");
          if (strong) strong.textContent = ago(r.json.snapshot_age_s);
        }
        if (String(r.json.seq) !== String(seq)) { seq = r.json.seq; delay = 10000; refreshTable(); }
        else delay = Math.min(delay * 1.5, 60000);
        schedule(delay);
      }, function () { schedule(60000); });
    }
    function schedule(ms) { clearTimeout(timer); timer = setTimeout(check, ms); }
    schedule(delay);
    return { soon: function () { delay = 10000; schedule(1500); setTimeout(check, 5000); } };
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
    // The newest five commands under way are followed; older ones show on
    // a reload (each followed command is one small request at a time).
    Array.prototype.slice.call(document.querySelectorAll("[data-command-id]"), 0, 5).forEach(function (n) {
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

  // Polls every data-refresh-every seconds while the content changes,
  // backing off to a minute while it does not (a stack waiting on hosts
  // that are offline), asking with If-None-Match so an unchanged part
  // costs a 304 and no body, and stops after 10 minutes with a note.
  function setupRefresh(box) {
    var base = (parseFloat(box.dataset.refreshEvery) || 3) * 1000;
    var every = base, etag = null, started = Date.now();
    function pending() { return box.querySelector("[data-pending]") !== null; }
    function stop() {
      var note = document.createElement("p");
      note.className = "muted";
      note.textContent = "Stopped refreshing after 10 minutes; reload the page to see later changes.";
      box.appendChild(note);
    }
    function step() {
      if (!pending()) return;
      if (Date.now() - started > 10 * 60 * 1000) { stop(); return; }
      if (document.hidden) { setTimeout(step, every); return; }
      var headers = { Accept: "text/html" };
      if (etag) headers["If-None-Match"] = etag;
      fetch(box.dataset.refreshUrl, { credentials: "same-origin", headers: headers })
        .then(function (r) {
          if (r.status === 304) return "";
          if (!r.ok || r.redirected) return null;
          etag = r.headers.get("ETag");
          return r.text();
        })
        .then(function (html) {
          if (html === null) return;
          if (html === "") { every = Math.min(every * 1.5, 60000); setTimeout(step, every); return; }
          // Not under a keyboard user's focus: wait until it leaves.
          if (box.contains(document.activeElement)) { setTimeout(step, every); return; }
          box.innerHTML = html;
          every = base;
          setTimeout(step, every);
        }, function () { setTimeout(step, every * 5); });
    }
    setTimeout(step, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-refresh-url]"), setupRefresh);
  });
})();
