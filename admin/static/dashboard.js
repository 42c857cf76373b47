// Keeps the dashboard live: every data-refresh seconds it fetches the page
// again and swaps in the new figures (the server renders them, tables
// and text alternatives included), keeping open tables open. A custom
// range (data-refresh 0) stays as it is. #live's data-refreshed counts
// the figures shown: 1 for the page as loaded.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  live.dataset.refreshed = "1";
  var every = parseInt(live.dataset.refresh || "0", 10);
  if (!every) {
    return;
  }

  function refresh() {
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (resp) {
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("live");
        if (!next) {
          return;
        }
        var open = {};
        live.querySelectorAll("details[id]").forEach(function (d) {
          open[d.id] = d.open;
        });
        next.querySelectorAll("details[id]").forEach(function (d) {
          if (open[d.id]) {
            d.open = true;
          }
        });
        var count = parseInt(live.dataset.refreshed || "0", 10) + 1;
        live.replaceChildren.apply(live, Array.prototype.slice.call(next.childNodes).map(function (n) {
          return document.importNode(n, true);
        }));
        live.dataset.refreshed = String(count);
      })
      .catch(function () {})
      .finally(function () {
        setTimeout(refresh, every * 1000);
      });
  }
  setTimeout(refresh, every * 1000);
})();
