// Wide tables scroll sideways in a box of their own instead of widening
// the page (a phone is 375 px wide). A box that scrolls — a table's, or a
// block of code — is focusable, so keyboard users can scroll it too.
// Tables and code that scripts add, fill or show later are handled as
// they change.
(function () {
  "use strict";
  function label(table) {
    if (table.getAttribute("aria-label")) return table.getAttribute("aria-label");
    if (table.caption) return table.caption.textContent.trim();
    for (let el = table; el && el !== document.body; el = el.parentElement) {
      for (let p = el.previousElementSibling; p; p = p.previousElementSibling) {
        if (/^H[1-6]$/.test(p.tagName)) return p.textContent.trim();
      }
    }
    return "Table";
  }
  function update(box) {
    if (box.scrollWidth > box.clientWidth || box.scrollHeight > box.clientHeight) box.tabIndex = 0;
    else if (!box.hasAttribute("data-focusable")) box.removeAttribute("tabindex");
  }
  const sizes = new ResizeObserver(function (entries) {
    entries.forEach(function (e) {
      const box = e.target.closest(".table-scroll, pre");
      if (box) update(box);
    });
  });
  function watchCode(pre) {
    if (pre.getAttribute("tabindex") === "0") pre.setAttribute("data-focusable", "");
    sizes.observe(pre);
    update(pre);
  }
  function wrap(table) {
    let box = table.closest(".table-scroll");
    if (!box) {
      box = document.createElement("div");
      box.className = "table-scroll";
      box.setAttribute("role", "region");
      box.setAttribute("aria-label", label(table));
      table.parentNode.insertBefore(box, table);
      box.appendChild(table);
    } else if (box.getAttribute("tabindex") === "0") {
      // A box the page made focusable stays so.
      box.setAttribute("data-focusable", "");
    }
    sizes.observe(box);
    sizes.observe(table);
    update(box);
  }
  document.querySelectorAll("table").forEach(wrap);
  document.querySelectorAll("pre").forEach(watchCode);
  new MutationObserver(function (records) {
    records.forEach(function (r) {
      r.addedNodes.forEach(function (n) {
        if (n.nodeType !== 1) return;
        if (n.tagName === "TABLE") wrap(n);
        else if (n.tagName === "PRE") watchCode(n);
        else {
          n.querySelectorAll("table").forEach(wrap);
          n.querySelectorAll("pre").forEach(watchCode);
        }
      });
    });
    // Text filled into a block of code changes its scroll size, not
    // always its box.
    records.forEach(function (r) {
      const pre = r.target.nodeType === 1 ? r.target.closest("pre") : r.target.parentElement && r.target.parentElement.closest("pre");
      if (pre) update(pre);
    });
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
})();
