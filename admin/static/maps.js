// Validation as you type for the attribute map form: every change is sent
// to POST /api/v1/maps/validate and each problem is shown beside the field
// its location names.
(function () {
  "use strict";
  var form = document.getElementById("attr-form");
  if (!form) {
    return;
  }
  var status = document.getElementById("attr-status");
  var others = document.getElementById("attr-other-problems");
  var timer = null;
  var latest = 0;

  function value(name) {
    return form.elements[name].value;
  }

  function request() {
    return {
      version: parseInt(form.dataset.version, 10),
      map: form.dataset.map,
      attribute: form.dataset.attr,
      change: {
        fhirPath: value("fhirPath"),
        crmAttribute: value("crmAttribute"),
        crmType: value("crmType"),
        direction: value("direction"),
        enabled: form.elements.enabled.checked
      }
    };
  }

  function show(problems) {
    form.querySelectorAll(".field-problem").forEach(function (el) {
      el.textContent = "";
      el.hidden = true;
    });
    others.textContent = "";
    others.hidden = true;
    problems.forEach(function (p) {
      var here = p.map === form.dataset.map && p.attribute === form.dataset.attr && !p.expansion;
      var el = here ? form.querySelector('.field-problem[data-for="' + p.field + '"]') : null;
      if (el) {
        el.textContent = el.textContent ? el.textContent + " " + p.message : p.message;
        el.hidden = false;
        return;
      }
      var li = document.createElement("li");
      li.textContent = p.location + ": " + p.message;
      others.appendChild(li);
      others.hidden = false;
    });
    form.classList.toggle("invalid", problems.length > 0);
    status.textContent = problems.length === 0 ? "Valid." : problems.length + " problem(s).";
  }

  function validate() {
    var mine = ++latest;
    fetch("/api/v1/maps/validate", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request())
    }).then(function (resp) {
      return resp.json().then(function (body) {
        if (mine !== latest) {
          return; // a newer keystroke is already on its way
        }
        if (!resp.ok) {
          status.textContent = (body.error && body.error.message) || "Validation failed.";
          return;
        }
        show(body.problems || []);
      });
    }).catch(function () {
      if (mine === latest) {
        status.textContent = "Could not reach the server to validate.";
      }
    });
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(validate, 200);
  }

  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
  validate();
})();
