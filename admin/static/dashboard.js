// Keeps the dashboard live: polls GET /api/v1/dashboard every few seconds
// and redraws the numbers, the bars, the reasons, the queues and the feeds.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var outcomes = ["sent", "skipped", "held", "failed", "dead_lettered"];

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = value;
    }
  }

  function cell(tr, value, href) {
    var td = document.createElement("td");
    if (href) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = value;
      td.appendChild(a);
    } else {
      td.textContent = value;
    }
    tr.appendChild(td);
    return td;
  }

  function rows(id, items, fill, empty) {
    var tbody = document.querySelector("#" + id + " tbody");
    tbody.textContent = "";
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      fill(tr, item);
      tbody.appendChild(tr);
    });
    if (items.length === 0 && empty) {
      var tr = document.createElement("tr");
      var td = cell(tr, empty);
      td.colSpan = 4;
      td.className = "muted";
      tbody.appendChild(tr);
    }
  }

  function lag(seconds) {
    if (seconds < 120) {
      return seconds + "s";
    }
    if (seconds < 7200) {
      return Math.round(seconds / 60) + "m";
    }
    return Math.round(seconds / 3600) + "h";
  }

  function draw(s) {
    text("stats-at", "as of " + s.at.replace("T", " ").replace(/\.\d+/, ""));
    text("stat-total", s.total);
    text("stat-rate", s.per_minute.toFixed(1));
    text("stat-open-conflicts", s.open_conflicts);
    s.outcomes.forEach(function (o) {
      text("stat-" + o.outcome, o.count);
    });
    var bars = document.getElementById("bars");
    bars.textContent = "";
    s.buckets.forEach(function (b) {
      var bar = document.createElement("div");
      bar.className = "bar";
      var n = 0;
      outcomes.forEach(function (o) {
        var v = b.by_outcome[o] || 0;
        n += v;
        if (v > 0) {
          var seg = document.createElement("div");
          seg.className = "seg-" + o;
          seg.style.height = (100 * v / Math.max(1, s.max_bucket)) + "%";
          bar.appendChild(seg);
        }
      });
      bar.title = b.start + ": " + n + " decisions";
      bars.appendChild(bar);
    });
    rows("top-reasons", s.top_reasons, function (tr, r) {
      cell(tr, r.reason, "/logs?reason=" + encodeURIComponent(r.reason));
      cell(tr, r.count);
      var m = document.createElement("meter");
      m.min = 0;
      m.max = Math.max(1, s.total);
      m.value = r.count;
      cell(tr, "").appendChild(m);
    }, "No decisions yet.");
    rows("queues", s.queues, function (tr, q) {
      cell(tr, q.queue);
      cell(tr, q.active);
      cell(tr, q.scheduled);
      cell(tr, q.dead_letter, q.dead_letter ? "/deadletters" : null);
    });
    rows("feeds", s.feeds, function (tr, f) {
      cell(tr, f.feed);
      cell(tr, f.last_poll.replace("T", " ").replace(/\.\d+/, ""));
      cell(tr, lag(f.lag_seconds));
    }, "No feed has polled yet.");
    live.dataset.refreshed = String((parseInt(live.dataset.refreshed || "0", 10)) + 1);
  }

  function poll() {
    fetch("/api/v1/dashboard?hours=" + encodeURIComponent(live.dataset.hours), { credentials: "same-origin" })
      .then(function (resp) {
        return resp.ok ? resp.json() : null;
      })
      .then(function (s) {
        if (s) {
          draw(s);
        }
      })
      .catch(function () {})
      .finally(function () {
        setTimeout(poll, 5000);
      });
  }
  poll();
})();
