// Wide tables scroll sideways in a box of their own instead of widening
// the page (a phone is 375 px wide). A box that scrolls is focusable and
// named, so keyboard and screen-reader users can scroll it too.
(function () {
  "use strict";
  function label(table) {
    if (table.getAttribute("aria-label")) return table.getAttribute("aria-label");
    if (table.caption) return table.caption.textContent.trim();
    for (let el = table.parentElement; el; el = el.parentElement) {
      for (let p = el.previousElementSibling; p; p = p.previousElementSibling) {
        if (/^H[1-6]$/.test(p.tagName)) return p.textContent.trim();
      }
    }
    return "Table";
  }
  const boxes = [];
  document.querySelectorAll("table").forEach(function (table) {
    if (table.closest(".table-scroll")) return;
    const box = document.createElement("div");
    box.className = "table-scroll";
    box.setAttribute("role", "region");
    box.setAttribute("aria-label", label(table));
    table.parentNode.insertBefore(box, table);
    box.appendChild(table);
    boxes.push(box);
  });
  function update() {
    boxes.forEach(function (box) {
      if (box.scrollWidth > box.clientWidth) box.tabIndex = 0;
      else box.removeAttribute("tabindex");
    });
  }
  update();
  window.addEventListener("resize", update);
})();
