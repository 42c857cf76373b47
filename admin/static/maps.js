// Validation as you type for the attribute map form: every change is sent
// to POST /api/v1/maps/validate and each problem is shown beside the field
// its location names.
(function () {
  "use strict";
  var yamlForm = document.getElementById("yaml-form");
  if (yamlForm) {
    watchYAML(yamlForm);
  }
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

  // withFix is a problem's message with its suggested fix, when it has one.
  function withFix(p) {
    return p.fix ? p.message + " Suggested fix: " + p.fix : p.message;
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
        el.textContent = el.textContent ? el.textContent + " " + withFix(p) : withFix(p);
        el.hidden = false;
        return;
      }
      var li = document.createElement("li");
      li.textContent = p.location + ": " + withFix(p);
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

  // watchYAML validates the whole draft as it is typed and lists the
  // problems with their location and line under the text area.
  function watchYAML(f) {
    var area = document.getElementById("yaml");
    var list = document.getElementById("yaml-problems");
    var note = document.getElementById("yaml-status");
    var wait = null;
    var last = 0;
    function check() {
      var mine = ++last;
      fetch("/api/v1/maps/validate", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ yaml: area.value })
      }).then(function (resp) {
        return resp.json().then(function (body) {
          if (mine !== last) {
            return;
          }
          list.textContent = "";
          if (!resp.ok) {
            note.textContent = (body.error && body.error.message) || "Validation failed.";
            return;
          }
          var ps = body.problems || [];
          ps.forEach(function (p) {
            var li = document.createElement("li");
            li.textContent = (p.line ? "line " + p.line + ", " : "") + p.location + ": " + withFix(p);
            list.appendChild(li);
          });
          list.hidden = ps.length === 0;
          note.textContent = ps.length === 0 ? "The YAML is valid." : ps.length + " problem(s) in the YAML.";
        });
      }).catch(function () {
        if (mine === last) {
          note.textContent = "Could not reach the server to validate.";
        }
      });
    }
    area.addEventListener("input", function () {
      clearTimeout(wait);
      wait = setTimeout(check, 500);
    });
  }
})();
