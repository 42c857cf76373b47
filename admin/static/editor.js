// The structured map editor. The page carries the draft as YAML (the
// text area is what is saved); this script builds forms from it and keeps
// the two in step through POST /api/v1/maps/document: a form edit sends
// the document and writes the canonical YAML it gets back into the text
// area, a YAML edit sends the text and rebuilds the forms from the
// document it gets back. Both answers carry the validation problems.
//
// Every control is a labelled form control or a button, so the editor
// works from the keyboard alone: attribute maps are added from the CRM
// attribute picker, moved with "Move up"/"Move down" and removed with
// buttons; FHIR paths complete as a combobox (arrow keys, Enter, Escape).
(function () {
  "use strict";
  var root = document.getElementById("editor");
  var yamlArea = document.getElementById("ed-yaml");
  var form = document.getElementById("editor-form");
  if (!root || !yamlArea || !form) {
    return;
  }
  var version = parseInt(root.dataset.version, 10);
  var hasCRM = root.dataset.crm === "true";
  var status = document.getElementById("ed-status");
  var problemList = document.getElementById("ed-problems");
  var yamlStatus = document.getElementById("ed-yaml-status");
  var yamlProblems = document.getElementById("ed-yaml-problems");
  var dirtyBadge = document.getElementById("ed-dirty");
  var mapSelect = document.getElementById("ed-map");
  var formMap = document.getElementById("ed-form-map");

  var CRM_TYPES = ["string", "memo", "int", "decimal", "money", "bool", "date-only", "date-time", "option-set", "multi-select", "lookup"];
  var DIRECTIONS = [["", "Both ways (FHIR \u2194 CRM)"], ["fhir-to-crm", "FHIR \u2192 CRM only"], ["crm-to-fhir", "CRM \u2192 FHIR only"]];
  var ACTIONS = [["copy", "Copy"], ["default", "Default value"], ["valueMap", "Value map"], ["lookup", "Lookup"], ["computed", "Computed (FHIRPath, FHIR \u2192 CRM)"]];
  var CONFLICT = [["last-writer-wins", "Last writer wins"], ["fhir-wins", "FHIR wins"], ["crm-wins", "CRM wins"], ["hold", "Hold for a person"]];
  var DELETES = [["propagate", "Propagate the deletion"], ["deactivate", "Deactivate"], ["ignore", "Ignore"]];
  var OPERATORS = [["eq", "equals (eq)"], ["ne", "differs from (ne)"], ["in", "is one of (in)"], ["notnull", "has a value (notnull)"]];

  var doc = null; // the map set as the forms edit it
  var mapIndex = 0;
  var selected = {}; // list key -> selected attribute map index
  var openPicker = null; // list key whose CRM attribute picker is open
  var problems = [];
  var savedYAML = yamlArea.defaultValue;
  var dirty = false;
  var leaving = false;
  var seq = 0; // the latest round trip; older answers are dropped
  var inflight = null;
  var pushTimer = null;
  var pullTimer = null;
  var crm = {}; // entity -> promise of its attribute listing (or null)
  var elements = {}; // completion cache: type|within|path -> promise
  var sampleName = "";
  var sampleResults = null;

  // ---- small DOM helpers ----------------------------------------------

  function h(tag, props, kids) {
    var el = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      var v = props[k];
      if (v === undefined || v === null || v === false) {
        return;
      }
      if (k === "text") {
        el.textContent = v;
      } else if (k === "class") {
        el.className = v;
      } else if (k.indexOf("on") === 0) {
        el.addEventListener(k.slice(2), v);
      } else if (k === "value") {
        el.value = v;
      } else if (k === "checked") {
        el.checked = true;
      } else {
        el.setAttribute(k, v === true ? "" : v);
      }
    });
    (kids || []).forEach(function (c) {
      if (c !== null && c !== undefined && c !== false) {
        el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
      }
    });
    return el;
  }

  function say(msg) {
    status.textContent = msg;
  }

  // announce tells what an action did (moved, added, removed) in a live
  // region of its own, so the validation status that follows does not
  // replace it.
  var announcer = document.getElementById("ed-announce");
  function announce(msg) {
    announcer.textContent = msg;
  }

  function withFix(p) {
    return p.fix ? p.message + " Suggested fix: " + p.fix : p.message;
  }

  // field builds a labelled control. kind is text, number, select,
  // checkbox or textarea; set receives the new value on every edit.
  function field(label, id, value, set, opts) {
    opts = opts || {};
    var kind = opts.kind || "text";
    var hintId = opts.hint ? id + "-hint" : null;
    var probId = id + "-problem";
    var ctl;
    var described = [hintId, probId].filter(Boolean).join(" ");
    if (kind === "select") {
      ctl = h("select", { id: id, "aria-describedby": described });
      opts.options.forEach(function (o) {
        ctl.appendChild(h("option", { value: o[0], text: o[1] }));
      });
      ctl.value = value === undefined || value === null ? "" : String(value);
      ctl.addEventListener("change", function () { set(ctl.value); changed(); });
    } else if (kind === "checkbox") {
      ctl = h("input", { type: "checkbox", id: id, checked: !!value, "aria-describedby": described });
      ctl.addEventListener("change", function () { set(ctl.checked); changed(); });
      return h("div", { class: "ed-field" }, [h("label", { class: "check", for: id }, [ctl, " " + label]),
        hintId ? h("span", { class: "hint", id: hintId, text: opts.hint }) : null,
        h("span", { class: "field-problem", id: probId, "data-field": opts.field || "", hidden: true })]);
    } else if (kind === "textarea") {
      ctl = h("textarea", { id: id, rows: opts.rows || 3, spellcheck: "false", "aria-describedby": described });
      ctl.value = value || "";
      ctl.addEventListener("input", function () { set(ctl.value); changed(); });
    } else {
      ctl = h("input", { type: kind, id: id, autocomplete: "off", spellcheck: "false", "aria-describedby": described, list: opts.list, inputmode: opts.inputmode });
      ctl.value = value === undefined || value === null ? "" : String(value);
      ctl.addEventListener("input", function () { set(ctl.value); changed(); });
    }
    if (opts.onChange) {
      ctl.addEventListener("change", opts.onChange);
    }
    return h("div", { class: "ed-field" }, [h("label", { for: id, text: label }), ctl,
      hintId ? h("span", { class: "hint", id: hintId, text: opts.hint }) : null,
      h("span", { class: "field-problem", id: probId, "data-field": opts.field || "", hidden: true })]);
  }

  function setOrDelete(obj, key, v) {
    if (v === "" || v === null || v === undefined || (Array.isArray(v) && v.length === 0)) {
      delete obj[key];
    } else {
      obj[key] = v;
    }
  }

  function lines(v) {
    return v.split("\n").map(function (s) { return s.trim(); }).filter(Boolean);
  }

  function csv(v) {
    return v.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
  }

  function num(v) {
    if (String(v).trim() === "") {
      return undefined;
    }
    var n = Number(v);
    return isNaN(n) ? v : n;
  }

  function currentMap() {
    return doc && doc.entityMaps && doc.entityMaps[mapIndex];
  }

  // ---- round trips --------------------------------------------------------

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json().then(function (b) { return { ok: resp.ok, status: resp.status, body: b }; });
    });
  }

  function get(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (resp) {
      return resp.json().then(function (b) { return { ok: resp.ok, status: resp.status, body: b }; });
    });
  }

  // prune drops optional objects left empty by the forms, which would
  // otherwise be written as empty YAML mappings.
  function prune(d) {
    var copy = JSON.parse(JSON.stringify(d));
    function empty(o) {
      return !o || Object.keys(o).every(function (k) {
        var v = o[k];
        return v === "" || v === null || v === undefined || (Array.isArray(v) && v.length === 0);
      });
    }
    (copy.entityMaps || []).forEach(function (em) {
      if (em.fhirFilter && !em.fhirFilter.name && !em.fhirFilter.expression) {
        delete em.fhirFilter;
      }
      ["crmFilter", "crmGate"].forEach(function (k) {
        var f = em[k];
        if (f && !f.name && !f.attribute && !(f.values && f.values.length)) {
          delete em[k];
        }
      });
      if (em.correlation && "businessKey" in em.correlation && empty(em.correlation.businessKey)) {
        delete em.correlation.businessKey;
      }
      var attrs = (em.attributes || []).slice();
      (em.expansions || []).forEach(function (x) { attrs = attrs.concat(x.attributes || []); });
      attrs.forEach(function (a) {
        if ("lookup" in a && empty(a.lookup)) {
          delete a.lookup;
        }
      });
    });
    return copy;
  }

  function changed() {
    setDirty(true);
    samplesStale();
    clearTimeout(pushTimer);
    pushTimer = setTimeout(pushDoc, 300);
  }

  // pushDoc sends the forms' document and writes the YAML it gets back.
  function pushDoc() {
    pushTimer = null;
    var mine = ++seq;
    say("Checking\u2026");
    inflight = post("/api/v1/maps/document", { document: prune(doc) }).then(function (r) {
      if (mine !== seq) {
        return;
      }
      if (!r.ok) {
        say((r.body.error && r.body.error.message) || "The forms could not be turned into YAML.");
        showProblems(r.body.problems || []);
        return;
      }
      if (pullTimer) {
        return; // the YAML was typed in meanwhile: it wins, and is read next
      }
      yamlArea.value = r.body.yaml;
      yamlStatus.textContent = "";
      yamlProblems.hidden = true;
      setDirty(yamlArea.value !== savedYAML);
      showProblems(r.body.problems, r.body.warning);
      runSamples();
    }).catch(function () {
      if (mine === seq) {
        say("Could not reach the server to check the draft.");
      }
    }).finally(function () {
      if (mine === seq) {
        inflight = null;
      }
    });
    return inflight;
  }

  // pullYAML sends the text area and rebuilds the forms from it.
  function pullYAML(first) {
    pullTimer = null;
    var mine = ++seq;
    if (!first) {
      say("Reading the YAML\u2026");
    }
    inflight = post("/api/v1/maps/document", { yaml: yamlArea.value }).then(function (r) {
      if (mine !== seq) {
        return;
      }
      yamlProblems.textContent = "";
      if (!r.ok) {
        var ps = r.body.problems || [];
        ps.forEach(function (p) {
          yamlProblems.appendChild(h("li", { text: (p.line ? "line " + p.line + ", " : "") + p.location + ": " + withFix(p) }));
        });
        yamlProblems.hidden = ps.length === 0;
        var msg = (r.body.error && r.body.error.message) || "The YAML cannot be read.";
        yamlStatus.textContent = msg + " The forms show the last readable version.";
        say(msg);
        if (!doc) {
          root.hidden = true;
        }
        return;
      }
      yamlProblems.hidden = true;
      yamlStatus.textContent = first ? "" : "The forms were updated from the YAML.";
      doc = r.body.document;
      if (first) {
        var want = root.dataset.map;
        (doc.entityMaps || []).forEach(function (em, i) {
          if (em.name === want) {
            mapIndex = i;
          }
        });
      }
      if (!doc.entityMaps || mapIndex >= doc.entityMaps.length) {
        mapIndex = 0;
      }
      root.hidden = false;
      renderAll();
      showProblems(r.body.problems, r.body.warning);
      if (!first) {
        setDirty(yamlArea.value !== savedYAML);
      }
      loadCRM();
      runSamples();
    }).catch(function () {
      if (mine === seq) {
        say("Could not reach the server to read the YAML.");
      }
    }).finally(function () {
      if (mine === seq) {
        inflight = null;
      }
    });
    return inflight;
  }

  yamlArea.addEventListener("input", function () {
    setDirty(true);
    samplesStale();
    clearTimeout(pushTimer);
    pushTimer = null;
    clearTimeout(pullTimer);
    pullTimer = setTimeout(pullYAML, 500);
  });
  // Leaving the text area reads it at once, so the forms are up to date
  // before they are edited.
  yamlArea.addEventListener("blur", function () {
    if (pullTimer) {
      clearTimeout(pullTimer);
      pullYAML();
    }
  });

  function showProblems(ps, warning) {
    problems = ps || [];
    problemList.textContent = "";
    problems.forEach(function (p) {
      problemList.appendChild(h("li", {}, [h("span", { class: "loc", text: p.location }), ": " + withFix(p)]));
    });
    problemList.hidden = problems.length === 0;
    var msg = problems.length === 0 ? "The draft is valid." : problems.length + " problem(s) in the draft; they are listed here and beside their fields.";
    if (warning) {
      msg += " " + warning;
    }
    say(msg);
    markFields();
  }

  // markFields shows each problem of the open entity map beside its field.
  function markFields() {
    root.querySelectorAll(".field-problem").forEach(function (el) {
      el.textContent = "";
      el.hidden = true;
    });
    root.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
    root.querySelectorAll(".attr-problems").forEach(function (el) { el.textContent = ""; });
    var em = currentMap();
    if (!em) {
      return;
    }
    problems.forEach(function (p) {
      if (p.map !== em.name) {
        return;
      }
      var scope = root;
      if (p.expansion) {
        scope = root.querySelector('[data-expansion="' + cssEscape(p.expansion) + '"]') || root;
      }
      if (p.attribute) {
        var row = scope.querySelector('.attr-list li[data-name="' + cssEscape(p.attribute) + '"] .attr-problems');
        if (row) {
          row.textContent = "problem: " + p.field;
          row.hidden = false;
        }
        var detail = scope.querySelector('.attr-detail[data-name="' + cssEscape(p.attribute) + '"]');
        scope = detail || null;
      } else if (!p.expansion) {
        scope = document.getElementById("ed-entity-body");
      }
      if (!scope) {
        return;
      }
      var field = (p.field || "").replace(/\[\d+\]$/, "");
      var el = scope.querySelector('.field-problem[data-field="' + cssEscape(field) + '"]');
      if (el) {
        el.textContent = el.textContent ? el.textContent + " " + withFix(p) : withFix(p);
        el.hidden = false;
        var ctl = document.getElementById(el.id.replace(/-problem$/, ""));
        if (ctl) {
          ctl.setAttribute("aria-invalid", "true");
        }
      }
    });
  }

  function cssEscape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : String(s).replace(/["\\]/g, "\\$&");
  }

  // ---- unsaved changes ----------------------------------------------------

  function setDirty(d) {
    dirty = d;
    dirtyBadge.hidden = !d;
  }

  window.addEventListener("beforeunload", function (e) {
    if (dirty && !leaving) {
      e.preventDefault();
      e.returnValue = "This draft has changes that are not saved.";
    }
  });

  var dialog = document.getElementById("leave-dialog");
  var pendingLeave = null;
  var leaveFrom = null;

  function askToLeave(go, from) {
    pendingLeave = go;
    leaveFrom = from;
    dialog.showModal();
    document.getElementById("leave-stay").focus();
  }

  document.getElementById("leave-stay").addEventListener("click", function () {
    dialog.close();
  });
  dialog.addEventListener("close", function () {
    if (leaveFrom && !leaving) {
      leaveFrom.focus();
    }
  });
  document.getElementById("leave-go").addEventListener("click", function () {
    leaving = true;
    dialog.close();
    if (pendingLeave) {
      pendingLeave();
    }
  });

  // In-app links and other forms (sign out) ask first while there are
  // unsaved changes.
  document.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a[href]");
    if (!a || !dirty || leaving || e.defaultPrevented) {
      return;
    }
    var href = a.getAttribute("href");
    if (href.charAt(0) === "#" || a.target === "_blank" || e.ctrlKey || e.metaKey || e.shiftKey) {
      return;
    }
    e.preventDefault();
    askToLeave(function () { window.location.href = a.href; }, a);
  }, true);
  document.addEventListener("submit", function (e) {
    var f = e.target;
    if (f === form || !dirty || leaving) {
      return;
    }
    e.preventDefault();
    askToLeave(function () { f.submit(); }, f.querySelector("button"));
  }, true);

  // Saving waits for a pending round trip, so the YAML saved is the forms'.
  form.addEventListener("submit", function (e) {
    if (pushTimer) {
      e.preventDefault();
      clearTimeout(pushTimer);
      pushDoc().then(submit);
      return;
    }
    if (inflight) {
      e.preventDefault();
      inflight.then(submit);
      return;
    }
    leaving = true;
  });

  function submit() {
    leaving = true;
    form.submit();
  }

  // ---- CRM metadata -------------------------------------------------------

  function crmAttributes(entity) {
    if (!hasCRM || !entity) {
      return Promise.resolve(null);
    }
    if (!crm[entity]) {
      crm[entity] = get("/api/v1/maps/crm-attributes?entity=" + encodeURIComponent(entity)).then(function (r) {
        return r.ok ? r.body : { error: (r.body.error && r.body.error.message) || "The CRM's metadata could not be read." };
      }).catch(function () {
        return { error: "Could not reach the server to read the CRM's metadata." };
      });
    }
    return crm[entity];
  }

  var crmLoaded = {}; // entity -> listing, once read

  function crmEntities() {
    var out = [];
    (doc.entityMaps || []).forEach(function (em) {
      if (em.crmEntity && out.indexOf(em.crmEntity) < 0) {
        out.push(em.crmEntity);
      }
      (em.expansions || []).forEach(function (x) {
        if (x.crmEntity && out.indexOf(x.crmEntity) < 0) {
          out.push(x.crmEntity);
        }
      });
    });
    return out;
  }

  // loadCRM reads the metadata of every table the map set names and
  // re-renders the parts that show it once it is in.
  function loadCRM() {
    if (!hasCRM || !doc) {
      return;
    }
    var todo = crmEntities().filter(function (n) { return !crmLoaded[n]; });
    if (todo.length === 0) {
      return;
    }
    Promise.all(todo.map(function (n) {
      return crmAttributes(n).then(function (l) { crmLoaded[n] = l; });
    })).then(function () {
      renderDatalists();
      if (!root.contains(document.activeElement) || document.activeElement === mapSelect) {
        renderAll();
      } else {
        refreshHints();
      }
    });
  }

  function crmAttr(entity, name) {
    var l = crmLoaded[entity];
    if (!l || !l.attributes) {
      return null;
    }
    for (var i = 0; i < l.attributes.length; i++) {
      if (l.attributes[i].name === name) {
        return l.attributes[i];
      }
    }
    return null;
  }

  function describeAttr(entity, name) {
    if (!hasCRM) {
      return "No CRM is configured; the attribute is checked when the CRM can be read.";
    }
    var l = crmLoaded[entity];
    if (!l) {
      return "Reading the CRM's metadata\u2026";
    }
    if (l.error) {
      return l.error;
    }
    if (!name) {
      return "Choose one of the " + l.attributes.length + " attributes of " + entity + ".";
    }
    var a = crmAttr(entity, name);
    if (!a) {
      return entity + " has no attribute \u201c" + name + "\u201d in the CRM's metadata.";
    }
    return attrDetails(a);
  }

  function attrDetails(a) {
    var parts = [a.type + (a.format ? " (" + a.format + ")" : "")];
    if (a.maxLength) {
      parts.push("max length " + a.maxLength);
    }
    if (a.precision !== undefined && a.precision !== null) {
      parts.push("precision " + a.precision);
    }
    if (a.minValue !== undefined && a.maxValue !== undefined) {
      parts.push("range " + a.minValue + " to " + a.maxValue);
    }
    if (a.targets && a.targets.length) {
      parts.push("lookup to " + a.targets.join(", "));
    }
    if (a.options && a.options.length) {
      parts.push("options " + a.options.map(function (o) { return o.value + " " + o.label; }).join(", "));
    }
    if (a.required) {
      parts.push("required");
    }
    if (!a.validForCreate && !a.validForUpdate) {
      parts.push("read-only");
    }
    return parts.join("; ");
  }

  var datalists = h("div", { hidden: true });
  document.body.appendChild(datalists);

  function datalistId(entity) {
    return "crm-list-" + entity;
  }

  function renderDatalists() {
    datalists.textContent = "";
    Object.keys(crmLoaded).forEach(function (entity) {
      var l = crmLoaded[entity];
      var dl = h("datalist", { id: datalistId(entity) });
      ((l && l.attributes) || []).forEach(function (a) {
        dl.appendChild(h("option", { value: a.name, label: a.type }));
      });
      datalists.appendChild(dl);
    });
  }

  function refreshHints() {
    root.querySelectorAll("[data-crm-hint]").forEach(function (el) {
      el.textContent = describeAttr(el.dataset.entity, document.getElementById(el.dataset.crmHint).value);
    });
  }

  var refreshButton = document.getElementById("ed-refresh-crm");
  if (refreshButton) {
    refreshButton.addEventListener("click", function () {
      var out = document.getElementById("ed-crm-status");
      var names = doc ? crmEntities() : [];
      out.textContent = "Reading the CRM's metadata again\u2026";
      refreshButton.disabled = true;
      post("/api/v1/maps/crm-metadata/refresh", { entities: names }).then(function (r) {
        if (!r.ok) {
          out.textContent = (r.body.error && r.body.error.message) || "The CRM's metadata could not be read.";
          return;
        }
        crm = {};
        crmLoaded = {};
        out.textContent = "CRM metadata read again: " + r.body.refreshed.map(function (x) {
          return x.entity + " (" + (x.found ? x.attributes + " attributes" : "not in the CRM") + ")";
        }).join(", ") + ".";
        loadCRM();
        if (doc) {
          pushDoc(); // check the draft against the fresh metadata
        }
      }).catch(function () {
        out.textContent = "Could not reach the server.";
      }).finally(function () {
        refreshButton.disabled = false;
        refreshButton.focus();
      });
    });
  }

  // ---- FHIR paths: completion and live evaluation -------------------------

  // splitPath cuts text at its last top-level dot: the parent path whose
  // children complete the rest.
  function splitPath(text) {
    var depth = 0;
    var quote = false;
    var cut = -1;
    for (var i = 0; i < text.length; i++) {
      var c = text.charAt(i);
      if (quote) {
        if (c === "'" && text.charAt(i - 1) !== "\\") {
          quote = false;
        }
      } else if (c === "'") {
        quote = true;
      } else if (c === "(" || c === "[") {
        depth++;
      } else if (c === ")" || c === "]") {
        depth--;
      } else if (c === "." && depth === 0) {
        cut = i;
      }
    }
    if (depth !== 0 || quote) {
      return null; // inside where(...) or a string: nothing to complete
    }
    return cut < 0 ? { parent: "", partial: text } : { parent: text.slice(0, cut), partial: text.slice(cut + 1) };
  }

  function fhirElements(type, within, parent) {
    var key = type + "|" + within + "|" + parent;
    if (!elements[key]) {
      elements[key] = get("/api/v1/maps/fhir-elements?type=" + encodeURIComponent(type) + "&within=" + encodeURIComponent(within) +
        "&path=" + encodeURIComponent(parent)).then(function (r) { return r.ok ? r.body.elements : []; }).catch(function () { return []; });
    }
    return elements[key];
  }

  // sampleResource is the FHIR resource of the chosen sample of the open
  // entity map (as edited).
  function sampleResource() {
    var em = currentMap();
    var found = [];
    ((em && em.samples) || []).forEach(function (s) {
      var res = s.direction === "fhir-to-crm" ? s.input : s.direction === "crm-to-fhir" ? s.base : "";
      if (res && res.trim()) {
        found.push({ name: s.name, resource: res });
      }
    });
    var named = found.filter(function (f) { return f.name === sampleName; });
    return named[0] || found[0] || null;
  }

  var fpCount = 0;

  // fhirPathField is a FHIRPath input that completes element names from
  // the R4 definitions and shows what it selects in the sample.
  function fhirPathField(label, id, value, set, ctx) {
    var listId = id + "-options";
    var resultId = id + "-result";
    var probId = id + "-problem";
    var input = h("input", {
      type: "text", id: id, autocomplete: "off", spellcheck: "false", role: "combobox",
      "aria-autocomplete": "list", "aria-expanded": "false", "aria-controls": listId,
      "aria-describedby": resultId + " " + probId
    });
    input.value = value || "";
    var list = h("ul", { id: listId, role: "listbox", class: "fp-options", "aria-label": "FHIR elements", hidden: true });
    var result = h("p", { id: resultId, class: "fp-result muted", role: "status", "aria-live": "polite" });
    var options = [];
    var active = -1;
    var compTimer = null;
    var evalTimer = null;
    var evalSeq = 0;
    var n = ++fpCount;

    function close() {
      list.hidden = true;
      list.textContent = "";
      options = [];
      active = -1;
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
    }

    function highlight(i) {
      active = i;
      options.forEach(function (o, j) { o.el.setAttribute("aria-selected", j === i ? "true" : "false"); });
      if (i >= 0) {
        input.setAttribute("aria-activedescendant", options[i].el.id);
        options[i].el.scrollIntoView({ block: "nearest" });
      } else {
        input.removeAttribute("aria-activedescendant");
      }
    }

    function accept(i) {
      var o = options[i];
      var caret = input.selectionStart;
      var before = input.value.slice(0, caret);
      var after = input.value.slice(caret);
      var sp = splitPath(before);
      if (!sp) {
        return;
      }
      var head = sp.parent ? sp.parent + "." : "";
      input.value = head + o.name + after;
      var at = (head + o.name).length;
      input.setSelectionRange(at, at);
      close();
      set(input.value);
      changed();
      evaluateSoon();
      result.textContent = "Completed with " + o.name + " (" + o.type + (o.many ? ", repeats" : "") + ").";
    }

    function complete() {
      var caret = input.selectionStart;
      var sp = splitPath(input.value.slice(0, caret));
      if (!sp || !ctx.fhirType()) {
        close();
        return;
      }
      var mine = input.value;
      fhirElements(ctx.fhirType(), ctx.within(), sp.parent.trim()).then(function (els) {
        if (input.value !== mine || document.activeElement !== input) {
          return;
        }
        var p = sp.partial.toLowerCase();
        var match = els.filter(function (e) { return e.name.toLowerCase().indexOf(p) === 0 && e.name !== sp.partial; }).slice(0, 40);
        list.textContent = "";
        options = match.map(function (e, j) {
          var el = h("li", { id: id + "-opt-" + j, role: "option", "aria-selected": "false" },
            [h("span", { class: "fp-name", text: e.name }), " ", h("span", { class: "muted", text: e.type + (e.many ? " [0..*]" : "") })]);
          el.addEventListener("mousedown", function (ev) {
            ev.preventDefault();
            accept(j);
          });
          list.appendChild(el);
          return { el: el, name: e.name, type: e.type, many: e.many };
        });
        list.hidden = options.length === 0;
        input.setAttribute("aria-expanded", options.length ? "true" : "false");
        active = -1;
      });
    }

    function evaluate() {
      var expr = input.value.trim();
      if (!expr) {
        result.textContent = "";
        return;
      }
      var s = sampleResource();
      if (!s) {
        result.textContent = "This entity map has no sample with a FHIR resource to evaluate the path on.";
        return;
      }
      var mine = ++evalSeq;
      post("/api/v1/maps/evaluate", { expression: expr, within: ctx.within(), resource: s.resource }).then(function (r) {
        if (mine !== evalSeq) {
          return;
        }
        if (!r.ok) {
          result.textContent = (r.body.error && r.body.error.message) || "The path could not be evaluated.";
          return;
        }
        if (r.body.error) {
          result.textContent = "On sample \u201c" + s.name + "\u201d: " + r.body.error;
          return;
        }
        var vs = r.body.values || [];
        if (vs.length === 0) {
          result.textContent = "On sample \u201c" + s.name + "\u201d this selects nothing.";
          return;
        }
        result.textContent = "On sample \u201c" + s.name + "\u201d this selects " + (vs.length === 1 ? "1 value" : vs.length + " values") + ": " +
          vs.map(function (v) { return JSON.stringify(v); }).join(", ");
      }).catch(function () {
        if (mine === evalSeq) {
          result.textContent = "Could not reach the server to evaluate the path.";
        }
      });
    }

    function evaluateSoon() {
      clearTimeout(evalTimer);
      evalTimer = setTimeout(evaluate, 350);
    }

    input.addEventListener("input", function () {
      close(); // its options were for the text before this keystroke
      set(input.value);
      changed();
      clearTimeout(compTimer);
      compTimer = setTimeout(complete, 120);
      evaluateSoon();
    });
    input.addEventListener("focus", function () {
      clearTimeout(compTimer);
      compTimer = setTimeout(complete, 120);
    });
    input.addEventListener("blur", function () { setTimeout(close, 150); });
    input.addEventListener("keydown", function (e) {
      if (list.hidden) {
        if (e.key === "ArrowDown" && e.altKey) {
          complete();
        }
        return;
      }
      if (e.key === "ArrowDown") {
        e.preventDefault();
        highlight(Math.min(active + 1, options.length - 1));
      } else if (e.key === "ArrowUp") {
        e.preventDefault();
        highlight(Math.max(active - 1, 0));
      } else if (e.key === "Enter" && active >= 0) {
        e.preventDefault();
        accept(active);
      } else if (e.key === "Escape") {
        e.preventDefault();
        close();
      }
    });
    evaluateSoon();
    var hint = "Type to complete element names from the FHIR R4 definitions of " + (ctx.describe ? ctx.describe() : "the resource") +
      "; arrow keys choose, Enter takes one. What the path selects in the sample shows below.";
    return h("div", { class: "ed-field fp-field", "data-fp": n }, [
      h("label", { for: id, text: label }),
      h("div", { class: "fp-combo" }, [input, list]),
      h("span", { class: "hint", text: hint }),
      result,
      h("span", { class: "field-problem", id: probId, "data-field": ctx.field || "fhirPath", hidden: true })]);
  }

  // ---- rendering ----------------------------------------------------------

  function renderAll() {
    if (!doc) {
      return;
    }
    var keepFocus = document.activeElement && document.activeElement.id;
    renderMapSelect();
    renderEntity();
    renderAttributes();
    renderExpansions();
    renderValueMaps();
    renderSamples();
    markFields();
    if (keepFocus && document.getElementById(keepFocus) && root.contains(document.getElementById(keepFocus))) {
      document.getElementById(keepFocus).focus();
    }
  }

  function renderMapSelect() {
    mapSelect.textContent = "";
    (doc.entityMaps || []).forEach(function (em, i) {
      mapSelect.appendChild(h("option", { value: String(i), text: em.name + " (" + em.fhirType + " \u2194 " + em.crmEntity + ")" }));
    });
    mapSelect.value = String(mapIndex);
    var em = currentMap();
    formMap.value = em ? em.name : "";
  }

  mapSelect.addEventListener("change", function () {
    mapIndex = parseInt(mapSelect.value, 10) || 0;
    selected = {};
    openPicker = null;
    sampleName = "";
    renderAll();
    var em = currentMap();
    if (em && window.history.replaceState) {
      window.history.replaceState(null, "", "?map=" + encodeURIComponent(em.name));
    }
    runSamples();
    announce("Editing entity map " + (em ? em.name : "") + ".");
  });

  function fieldset(legend, kids, cls) {
    return h("fieldset", { class: "ed-group" + (cls ? " " + cls : "") }, [h("legend", { text: legend })].concat(kids));
  }

  function renderEntity() {
    var body = document.getElementById("ed-entity-body");
    body.textContent = "";
    var em = currentMap();
    if (!em) {
      body.appendChild(h("p", { text: "This map set has no entity maps; add one in the YAML." }));
      return;
    }
    em.fhirToCRM = em.fhirToCRM || { enabled: false, operations: [] };
    em.crmToFHIR = em.crmToFHIR || { enabled: false, operations: [] };
    em.correlation = em.correlation || { crmAttribute: "", fhirIdentifierSystem: "" };
    var entity = function () { return em.crmEntity; };
    function flow(key, label) {
      var f = em[key];
      var ops = ["create", "update", "delete"].map(function (op) {
        return field(op, "ent-" + key + "-" + op, (f.operations || []).indexOf(op) >= 0, function (on) {
          var cur = (f.operations || []).filter(function (o) { return o !== op; });
          if (on) {
            cur.push(op);
          }
          f.operations = ["create", "update", "delete"].filter(function (o) { return cur.indexOf(o) >= 0; });
        }, { kind: "checkbox", field: key + ".operations" });
      });
      return fieldset(label, [field("Enabled", "ent-" + key + "-enabled", f.enabled, function (v) { f.enabled = v; }, { kind: "checkbox", field: key + ".enabled" })]
        .concat([h("div", { class: "ed-inline", role: "group", "aria-label": label + " operations" }, ops)]));
    }
    function crmField(label, id, obj, key, fieldName, ent) {
      var hintId = id + "-crm";
      var wrap = field(label, id, obj[key], function (v) { obj[key] = v; }, { list: datalistId(ent ? ent() : em.crmEntity), field: fieldName });
      wrap.appendChild(h("span", { class: "hint", id: hintId, "data-crm-hint": id, "data-entity": ent ? ent() : em.crmEntity, text: describeAttr(ent ? ent() : em.crmEntity, obj[key]) }));
      var input = wrap.querySelector("input");
      input.setAttribute("aria-describedby", input.getAttribute("aria-describedby") + " " + hintId);
      input.addEventListener("input", function () { document.getElementById(hintId).textContent = describeAttr(ent ? ent() : em.crmEntity, input.value); });
      return wrap;
    }
    function filter(key, label) {
      var f = em[key] || { name: "", attribute: "", operator: "eq", values: [] };
      em[key] = f;
      return fieldset(label, [
        field("Name", "ent-" + key + "-name", f.name, function (v) { f.name = v; }, { field: key + ".name" }),
        crmField("CRM attribute", "ent-" + key + "-attribute", f, "attribute", key + ".attribute"),
        field("Operator", "ent-" + key + "-operator", f.operator || "eq", function (v) { f.operator = v; }, { kind: "select", options: OPERATORS, field: key + ".operator" }),
        field("Values (comma-separated)", "ent-" + key + "-values", (f.values || []).join(", "), function (v) { f.values = csv(v); }, { field: key + ".values" })
      ]);
    }
    em.fhirFilter = em.fhirFilter || { name: "", expression: "" };
    em.correlation.businessKey = em.correlation.businessKey || { fhirIdentifierSystem: "", crmAttribute: "" };
    var bk = em.correlation.businessKey;
    var ctx = { fhirType: function () { return em.fhirType; }, within: function () { return ""; }, describe: function () { return em.fhirType; }, field: "fhirFilter.expression" };
    body.appendChild(h("div", { class: "ed-grid" }, [
      fieldset("Names", [
        field("Entity map name", "ent-name", em.name, function (v) { em.name = v; formMap.value = v; }, { field: "name" }),
        field("Description", "ent-description", em.description, function (v) { setOrDelete(em, "description", v); }, { field: "description" }),
        field("Enabled", "ent-enabled", em.enabled !== false, function (v) { if (v) { delete em.enabled; } else { em.enabled = false; } }, { kind: "checkbox", field: "enabled", hint: "A disabled map keeps its place; its records are skipped as map_disabled." })
      ]),
      fieldset("Tables", [
        field("FHIR resource type", "ent-fhirType", em.fhirType, function (v) { em.fhirType = v; }, { field: "fhirType" }),
        field("CRM table (logical name)", "ent-crmEntity", em.crmEntity, function (v) { em.crmEntity = v; }, { field: "crmEntity", onChange: loadCRM }),
        field("CRM entity set", "ent-crmEntitySet", em.crmEntitySet, function (v) { em.crmEntitySet = v; }, { field: "crmEntitySet" }),
        crmField("CRM id attribute (empty: table name + id)", "ent-crmIdAttribute", em, "crmIdAttribute", "crmIdAttribute")
      ]),
      flow("fhirToCRM", "FHIR \u2192 CRM"),
      flow("crmToFHIR", "CRM \u2192 FHIR (write-back)"),
      fieldset("Correlation", [
        crmField("CRM attribute holding the FHIR id", "ent-corr-crm", em.correlation, "crmAttribute", "correlation.crmAttribute"),
        field("FHIR identifier system holding the CRM id", "ent-corr-system", em.correlation.fhirIdentifierSystem, function (v) { em.correlation.fhirIdentifierSystem = v; }, { field: "correlation.fhirIdentifierSystem" }),
        field("Business key: FHIR identifier system", "ent-bk-system", bk.fhirIdentifierSystem, function (v) { bk.fhirIdentifierSystem = v; }, { field: "correlation.businessKey" }),
        crmField("Business key: CRM attribute (an alternate key)", "ent-bk-crm", bk, "crmAttribute", "correlation.businessKey")
      ]),
      fieldset("Policies", [
        field("Conflict policy", "ent-conflictPolicy", em.conflictPolicy || "last-writer-wins", function (v) { em.conflictPolicy = v; }, { kind: "select", options: CONFLICT, field: "conflictPolicy" }),
        field("When a linked record is deleted", "ent-deletePolicy", em.deletePolicy || "propagate", function (v) { setOrDelete(em, "deletePolicy", v === "propagate" ? "" : v); }, { kind: "select", options: DELETES, field: "deletePolicy" })
      ]),
      fieldset("FHIR filter", [
        field("Name", "ent-fhirFilter-name", em.fhirFilter.name, function (v) { em.fhirFilter.name = v; }, { field: "fhirFilter.name" }),
        fhirPathField("FHIRPath expression (true: the resource travels)", "ent-fhirFilter-expression", em.fhirFilter.expression, function (v) { em.fhirFilter.expression = v; }, ctx)
      ]),
      filter("crmFilter", "CRM filter"),
      filter("crmGate", "CRM per-record sync gate")
    ]));
  }

  function renderAttributes() {
    var body = document.getElementById("ed-attributes-body");
    body.textContent = "";
    var em = currentMap();
    if (!em) {
      return;
    }
    em.attributes = em.attributes || [];
    body.appendChild(attrList("am", em.attributes, {
      crmEntity: function () { return em.crmEntity; },
      fhirType: function () { return em.fhirType; },
      within: function () { return ""; },
      describe: function () { return em.fhirType; },
      label: "entity map " + em.name
    }));
  }

  function arrow(dir) {
    var d = dir === "both" ? "" : dir || "";
    var sym = d === "fhir-to-crm" ? "\u2192" : d === "crm-to-fhir" ? "\u2190" : "\u2194";
    var words = d === "fhir-to-crm" ? "FHIR to CRM" : d === "crm-to-fhir" ? "CRM to FHIR" : "both ways";
    return h("span", { class: "ed-arrow" }, [h("span", { "aria-hidden": "true", text: " " + sym + " " }), h("span", { class: "sr-only", text: " (" + words + ") " })]);
  }

  function uniqueName(list, base) {
    var names = list.map(function (a) { return a.name; });
    var name = base || "attribute";
    for (var i = 2; names.indexOf(name) >= 0; i++) {
      name = base + "-" + i;
    }
    return name;
  }

  // attrList is the list of attribute maps of an entity or expansion map:
  // each with Edit, Move up, Move down and Remove buttons, the picker to
  // add one, and the form of the selected one.
  function attrList(key, list, ctx) {
    var wrap = h("div", { class: "attr-block", id: key + "-block" });
    if (selected[key] === undefined || selected[key] >= list.length) {
      selected[key] = list.length ? 0 : -1;
    }
    var ol = h("ol", { class: "attr-list", id: key + "-list", "aria-label": "Attribute maps of " + ctx.label });
    list.forEach(function (a, i) {
      var isSel = i === selected[key];
      var off = a.enabled === false;
      var li = ol.appendChild(h("li", { "data-name": a.name, class: isSel ? "selected" : "" }, [
        h("span", { class: "attr-summary" }, [
          h("strong", { text: a.name }), " ",
          h("code", { text: a.fhirPath || "(constant)" }), arrow(a.direction), h("code", { text: a.crmAttribute || "?" }),
          off ? h("span", { class: "status status-disabled", text: "disabled" }) : null,
          " ", h("span", { class: "attr-problems field-problem inline", hidden: true })
        ]),
        h("span", { class: "attr-buttons" }, [
          h("button", { type: "button", class: "secondary", id: key + "-edit-" + i, "aria-pressed": isSel ? "true" : "false", "aria-controls": key + "-detail",
            "aria-label": "Edit " + a.name, text: "Edit", onclick: function () {
              selected[key] = i;
              rerender(key, list, ctx, key + "-edit-" + i);
              var first = document.querySelector("#" + key + "-detail input");
              if (first) {
                first.focus();
              }
            } }),
          h("button", { type: "button", class: "secondary", id: key + "-up-" + i, "aria-label": "Move up " + a.name, text: "Move up", disabled: i === 0,
            onclick: function () { move(key, list, ctx, i, -1); } }),
          h("button", { type: "button", class: "secondary", id: key + "-down-" + i, "aria-label": "Move down " + a.name, text: "Move down", disabled: i === list.length - 1,
            onclick: function () { move(key, list, ctx, i, 1); } }),
          h("button", { type: "button", class: "secondary danger", id: key + "-remove-" + i, "aria-label": "Remove " + a.name, text: "Remove",
            onclick: function () {
              var gone = list.splice(i, 1)[0];
              if (selected[key] >= list.length) {
                selected[key] = list.length - 1;
              }
              changed();
              var next = list.length === 0 ? key + "-add" : key + "-edit-" + Math.min(i, list.length - 1);
              rerender(key, list, ctx, next);
              announce("Attribute map " + gone.name + " removed; " + list.length + " left.");
            } })
        ])
      ]));
      if (isSel) {
        li.appendChild(attrDetail(key, list, i, ctx));
      }
    });
    if (list.length === 0) {
      ol.appendChild(h("li", { class: "muted", text: "No attribute maps yet." }));
    }
    wrap.appendChild(ol);
    var pickerOpen = openPicker === key;
    wrap.appendChild(h("p", {}, [h("button", { type: "button", id: key + "-add", "aria-expanded": pickerOpen ? "true" : "false", "aria-controls": key + "-picker",
      text: "Add attribute map\u2026", onclick: function () {
        openPicker = pickerOpen ? null : key;
        rerender(key, list, ctx, pickerOpen ? key + "-add" : key + "-picker-filter");
      } })]));
    if (pickerOpen) {
      wrap.appendChild(picker(key, list, ctx));
    }
    return wrap;
  }

  function rerender(key, list, ctx, focusId) {
    var block = document.getElementById(key + "-block");
    var fresh = attrList(key, list, ctx);
    block.parentNode.replaceChild(fresh, block);
    markFields();
    var f = focusId && document.getElementById(focusId);
    if (f) {
      if (f.disabled) {
        f = document.getElementById(focusId.replace(/-(up|down)-/, function (_, d) { return d === "up" ? "-down-" : "-up-"; })) || f;
      }
      f.focus();
    }
  }

  function move(key, list, ctx, i, by) {
    var j = i + by;
    if (j < 0 || j >= list.length) {
      return;
    }
    var a = list.splice(i, 1)[0];
    list.splice(j, 0, a);
    if (selected[key] === i) {
      selected[key] = j;
    } else if (selected[key] === j) {
      selected[key] = i;
    }
    changed();
    rerender(key, list, ctx, key + (by < 0 ? "-up-" : "-down-") + j);
    announce(a.name + " moved to position " + (j + 1) + " of " + list.length + ".");
  }

  // picker lists the CRM table's attributes from its metadata; choosing
  // one adds an attribute map for it with its type (and length) set.
  function picker(key, list, ctx) {
    var entity = ctx.crmEntity();
    var panel = h("div", { class: "card picker", id: key + "-picker", role: "region", "aria-label": "CRM attributes of " + entity });
    var filterInput = h("input", { type: "search", id: key + "-picker-filter", autocomplete: "off", "aria-describedby": key + "-picker-count" });
    var count = h("p", { id: key + "-picker-count", class: "muted", "aria-live": "polite" });
    var tbody = h("tbody");
    var table = h("table", { class: "list", id: key + "-picker-table" }, [
      h("caption", { class: "sr-only", text: "Attributes of " + entity + " in the CRM" }),
      h("thead", {}, [h("tr", {}, [h("th", { scope: "col", text: "Attribute" }), h("th", { scope: "col", text: "Type" }),
        h("th", { scope: "col", text: "Details" }), h("th", { scope: "col", text: "Add" })])]), tbody]);
    panel.appendChild(h("h3", { text: "Add an attribute map for a column of " + entity }));
    panel.appendChild(h("label", { for: key + "-picker-filter", text: "Find a CRM attribute" }));
    panel.appendChild(filterInput);
    panel.appendChild(count);
    panel.appendChild(table);
    panel.appendChild(h("p", { class: "actions" }, [
      h("button", { type: "button", class: "secondary", id: key + "-add-blank", text: "Add one without a CRM attribute", onclick: function () { add(key, list, ctx, null); } }),
      h("button", { type: "button", class: "secondary", id: key + "-picker-close", text: "Close the list", onclick: function () {
        openPicker = null;
        rerender(key, list, ctx, key + "-add");
      } })
    ]));
    var mapped = {};
    list.forEach(function (a) { mapped[a.crmAttribute] = true; });
    function fill(attrs) {
      var q = filterInput.value.trim().toLowerCase();
      tbody.textContent = "";
      var shown = attrs.filter(function (a) { return !q || a.name.toLowerCase().indexOf(q) >= 0 || a.type.toLowerCase().indexOf(q) >= 0; });
      shown.forEach(function (a) {
        tbody.appendChild(h("tr", { "data-attribute": a.name }, [
          h("td", {}, [h("code", { text: a.name }), mapped[a.name] ? h("span", { class: "status", text: "mapped" }) : null]),
          h("td", { text: a.type }),
          h("td", { text: attrDetails(a).split("; ").slice(1).join("; ") || "\u2014" }),
          h("td", {}, [h("button", { type: "button", id: key + "-pick-" + a.name, "aria-label": "Add an attribute map for " + a.name, text: "Add",
            disabled: !a.mapType, onclick: function () { add(key, list, ctx, a); } })])
        ]));
      });
      count.textContent = shown.length + " of " + attrs.length + " attributes" + (q ? " match \u201c" + filterInput.value.trim() + "\u201d" : "") + ".";
    }
    if (!hasCRM) {
      count.textContent = "No CRM is configured, so its attributes cannot be listed; add an attribute map and type the attribute's name.";
      table.hidden = true;
    } else {
      count.textContent = "Reading the CRM's metadata\u2026";
      crmAttributes(entity).then(function (l) {
        if (!l || l.error) {
          count.textContent = (l && l.error) || "The CRM's metadata could not be read.";
          table.hidden = true;
          return;
        }
        crmLoaded[entity] = l;
        fill(l.attributes);
        filterInput.addEventListener("input", function () { fill(l.attributes); });
      });
    }
    filterInput.addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        openPicker = null;
        rerender(key, list, ctx, key + "-add");
      }
    });
    return panel;
  }

  function add(key, list, ctx, a) {
    var am = { name: uniqueName(list, "attribute"), crmAttribute: "", crmType: "string", fhirPath: "" };
    if (a) {
      am.name = uniqueName(list, a.name.replace(/^msemr_/, "").replace(/_/g, "-"));
      am.crmAttribute = a.name;
      am.crmType = a.mapType || "string";
      if ((am.crmType === "string" || am.crmType === "memo") && a.maxLength) {
        am.maxLength = a.maxLength;
      }
      if (am.crmType === "option-set" || am.crmType === "multi-select") {
        am.action = "valueMap";
        am.valueMap = "";
      }
      if (am.crmType === "lookup") {
        am.action = "lookup";
        var target = null;
        (doc.entityMaps || []).forEach(function (em) {
          if (!target && a.targets && a.targets.indexOf(em.crmEntity) >= 0) {
            target = em.name;
          }
        });
        am.lookup = { entityMap: target || "" };
      }
    }
    list.push(am);
    selected[key] = list.length - 1;
    openPicker = null;
    changed();
    rerender(key, list, ctx, key + "-" + (list.length - 1) + "-fhirPath");
    announce("Attribute map " + am.name + " added at position " + list.length + (a ? " for " + a.name + " (" + am.crmType + ")" : "") + "; enter its FHIR path.");
  }

  function attrDetail(key, list, i, ctx) {
    var a = list[i];
    var id = key + "-" + i;
    var entity = ctx.crmEntity();
    var action = a.action || "copy";
    var wrap = h("div", { class: "card attr-detail", id: key + "-detail", "data-name": a.name, role: "group", "aria-labelledby": id + "-h" });
    wrap.appendChild(h("h3", { id: id + "-h", text: "Attribute map " + a.name + " (" + (i + 1) + " of " + list.length + ")" }));
    function redraw(focus) {
      rerender(key, list, ctx, focus);
    }
    var crmHint = id + "-crm";
    var crmWrap = field("CRM attribute", id + "-crmAttribute", a.crmAttribute, function (v) { a.crmAttribute = v; }, { list: datalistId(entity), field: "crmAttribute" });
    crmWrap.appendChild(h("span", { class: "hint", id: crmHint, "data-crm-hint": id + "-crmAttribute", "data-entity": entity, text: describeAttr(entity, a.crmAttribute) }));
    var crmInput = crmWrap.querySelector("input");
    crmInput.setAttribute("aria-describedby", crmInput.getAttribute("aria-describedby") + " " + crmHint);
    crmInput.addEventListener("input", function () { document.getElementById(crmHint).textContent = describeAttr(entity, crmInput.value); });
    var kids = [
      field("Name", id + "-name", a.name, function (v) { a.name = v; }, { field: "name", onChange: function () { redraw(id + "-name"); } }),
      crmWrap,
      field("CRM type", id + "-crmType", a.crmType, function (v) { a.crmType = v; }, { kind: "select", options: CRM_TYPES.map(function (t) { return [t, t]; }), field: "crmType",
        onChange: function () { redraw(id + "-crmType"); } }),
      field("Direction", id + "-direction", a.direction === "both" ? "" : a.direction, function (v) { setOrDelete(a, "direction", v); }, { kind: "select", options: DIRECTIONS, field: "direction",
        onChange: function () { redraw(id + "-direction"); } }),
      fhirPathField(action === "default" ? "FHIR path (empty: always the default)" : "FHIR path", id + "-fhirPath", a.fhirPath, function (v) { setOrDelete(a, "fhirPath", v); }, ctx),
      field("Fallback paths (one per line)", id + "-fallbackPaths", (a.fallbackPaths || []).join("\n"), function (v) { setOrDelete(a, "fallbackPaths", lines(v)); }, { kind: "textarea", rows: 2, field: "fallbackPaths",
        hint: "Tried in order when the FHIR path's leading element selects nothing." }),
      field("Action", id + "-action", action, function (v) { setOrDelete(a, "action", v === "copy" ? "" : v); }, { kind: "select", options: ACTIONS, field: "action",
        onChange: function () { redraw(id + "-action"); } })
    ];
    if (action === "default" || a.default) {
      kids.push(field("Default value", id + "-default", a.default, function (v) { setOrDelete(a, "default", v); }, { field: "default" }));
    }
    if (action === "valueMap" || a.valueMap) {
      var vms = [["", "(choose a value map)"]].concat((doc.valueMaps || []).map(function (v) { return [v.name, v.name]; }));
      kids.push(field("Value map", id + "-valueMap", a.valueMap, function (v) { a.valueMap = v; }, { kind: "select", options: vms, field: "valueMap" }));
    }
    if (a.lookup && a.lookup.byType && a.lookup.byType.length) {
      // A lookup by type (one column per referenced resource type) is
      // shown as it is and edited in the YAML; the document keeps it whole.
      kids.push(h("p", { id: id + "-bytype", class: "muted", text: "Lookup by the reference's type: " + a.lookup.byType.map(function (t) {
        return t.type + " \u2192 " + t.crmAttribute + " (" + t.entityMap + ")";
      }).join(", ") + (a.lookup.typeAttribute ? "; type column " + a.lookup.typeAttribute + " through " + a.lookup.typeValueMap : "") +
        (a.lookup.otherTypes === "skip" ? "; other types left unmapped" : "") + ". Edit it in the YAML." }));
    } else if (a.concept && !a.lookup) {
      // A concept lookup (a CodeableConcept to an msemr_codeableconcept
      // row, maps/concept.go) is shown as it is and edited in the YAML.
      kids.push(h("p", { id: id + "-concept", class: "muted", text: "Concept lookup: rows of type " + (a.concept.type === undefined ? "(none)" : a.concept.type) +
        (a.concept.systems && a.concept.systems.length ? ", codes of " + a.concept.systems.join(", ") : ", codes of any system") +
        (a.concept.create ? ", created when missing" : ", never created") + ". Edit it in the YAML." }));
    } else if (action === "lookup" || a.lookup) {
      a.lookup = a.lookup || { entityMap: "" };
      var ems = [["", "(choose an entity map)"]].concat((doc.entityMaps || []).map(function (m) { return [m.name, m.name + " (" + m.crmEntity + ")"]; }));
      kids.push(field("Lookup through entity map", id + "-lookup", a.lookup.entityMap, function (v) { a.lookup.entityMap = v; }, { kind: "select", options: ems, field: "lookup.entityMap" }));
      kids.push(field("Navigation property (empty: the attribute name)", id + "-navigation", a.lookup.navigation, function (v) { setOrDelete(a.lookup, "navigation", v); }, { field: "lookup.navigation" }));
    }
    if (action === "computed" || a.expression) {
      kids.push(fhirPathField("Computed expression (FHIRPath)", id + "-expression", a.expression, function (v) { setOrDelete(a, "expression", v); },
        { fhirType: ctx.fhirType, within: ctx.within, describe: ctx.describe, field: "expression" }));
    }
    if (a.crmType === "string" || a.crmType === "memo" || a.maxLength) {
      var meta = crmAttr(entity, a.crmAttribute);
      kids.push(field("Maximum length", id + "-maxLength", a.maxLength, function (v) { setOrDelete(a, "maxLength", num(v)); }, { kind: "number", field: "maxLength",
        hint: meta && meta.maxLength ? "The CRM column holds " + meta.maxLength + " characters." : null }));
      kids.push(field("Longer values", id + "-lengthPolicy", a.lengthPolicy || "error", function (v) { setOrDelete(a, "lengthPolicy", v === "error" ? "" : v); },
        { kind: "select", options: [["error", "Fail the record (mapping error)"], ["truncate", "Truncate to the maximum length"]], field: "lengthPolicy" }));
    }
    if (a.crmType === "decimal" || a.crmType === "money" || (a.round !== undefined && a.round !== null)) {
      var dmeta = crmAttr(entity, a.crmAttribute);
      kids.push(field("Round to decimal places", id + "-round", a.round, function (v) { setOrDelete(a, "round", num(v)); }, { kind: "number", field: "round",
        hint: dmeta && dmeta.precision !== undefined && dmeta.precision !== null ? "The CRM column keeps " + dmeta.precision + " decimal places." : null }));
    }
    kids.push(field("Conflict policy", id + "-conflictPolicy", a.conflictPolicy, function (v) { setOrDelete(a, "conflictPolicy", v); },
      { kind: "select", options: [["", "As the entity map"]].concat(CONFLICT), field: "conflictPolicy" }));
    kids.push(field("Required (a missing value is a mapping error)", id + "-required", a.required, function (v) { setOrDelete(a, "required", v || ""); }, { kind: "checkbox", field: "required" }));
    kids.push(field("Enabled", id + "-enabled", a.enabled !== false, function (v) { if (v) { delete a.enabled; } else { a.enabled = false; } }, { kind: "checkbox", field: "enabled" }));
    wrap.appendChild(h("div", { class: "ed-grid" }, kids));
    return wrap;
  }

  function renderExpansions() {
    var body = document.getElementById("ed-expansions-body");
    body.textContent = "";
    var em = currentMap();
    if (!em) {
      return;
    }
    em.expansions = em.expansions || [];
    em.expansions.forEach(function (x, i) {
      var id = "x" + i;
      x.attributes = x.attributes || [];
      var ctx = {
        crmEntity: function () { return x.crmEntity; },
        fhirType: function () { return em.fhirType; },
        within: function () { return x.fhirPath || ""; },
        describe: function () { return "one " + em.fhirType + "." + (x.fhirPath || "?") + " item"; },
        label: "expansion map " + x.name
      };
      var top = { fhirType: function () { return em.fhirType; }, within: function () { return ""; }, describe: function () { return em.fhirType; }, field: "fhirPath" };
      var box = h("fieldset", { class: "ed-group expansion", "data-expansion": x.name }, [h("legend", { text: "Expansion map " + x.name })]);
      box.appendChild(h("div", { class: "ed-grid" }, [
        field("Name", id + "-name", x.name, function (v) { x.name = v; }, { field: "name" }),
        field("Enabled", id + "-enabled", x.enabled !== false, function (v) { if (v) { delete x.enabled; } else { x.enabled = false; } }, { kind: "checkbox", field: "enabled" }),
        fhirPathField("FHIR array path", id + "-fhirPath", x.fhirPath, function (v) { x.fhirPath = v; }, top),
        field("Direction", id + "-direction", x.direction === "both" ? "" : x.direction, function (v) { setOrDelete(x, "direction", v); }, { kind: "select", options: DIRECTIONS, field: "direction" }),
        field("CRM child table", id + "-crmEntity", x.crmEntity, function (v) { x.crmEntity = v; }, { field: "crmEntity", onChange: loadCRM }),
        field("CRM entity set", id + "-crmEntitySet", x.crmEntitySet, function (v) { x.crmEntitySet = v; }, { field: "crmEntitySet" }),
        field("Child id attribute (empty: table name + id)", id + "-crmIdAttribute", x.crmIdAttribute, function (v) { setOrDelete(x, "crmIdAttribute", v); }, { field: "crmIdAttribute", list: datalistId(x.crmEntity) }),
        field("Parent lookup attribute", id + "-parentLookup", x.parentLookup, function (v) { x.parentLookup = v; }, { field: "parentLookup", list: datalistId(x.crmEntity) }),
        field("Parent navigation property (empty: the lookup's name)", id + "-parentNavigation", x.parentNavigation, function (v) { setOrDelete(x, "parentNavigation", v); }, { field: "parentNavigation" }),
        field("Match key (attribute map names, comma-separated)", id + "-matchKey", (x.matchKey || []).join(", "), function (v) { x.matchKey = csv(v); }, { field: "matchKey" }),
        field("When an item is removed", id + "-onRemove", x.onRemove || "delete", function (v) { x.onRemove = v; }, { kind: "select", options: [["delete", "Delete its row"], ["deactivate", "Deactivate its row"]], field: "onRemove" }),
        field("Leave out items where (one field=value per line)", id + "-exclude", (x.exclude || []).map(function (c) { return c.field + "=" + c.value; }).join("\n"), function (v) {
          setOrDelete(x, "exclude", lines(v).map(function (l) {
            var k = l.indexOf("=");
            return k < 0 ? { field: l, value: "" } : { field: l.slice(0, k).trim(), value: l.slice(k + 1).trim() };
          }));
        }, { kind: "textarea", rows: 2, field: "exclude" })
      ]));
      box.appendChild(h("h3", { text: "Attribute maps of " + x.name + " (relative to one item)" }));
      box.appendChild(attrList(id, x.attributes, ctx));
      if (x.expansions && x.expansions.length) {
        // Nested expansion maps travel in the document as they are; the
        // forms do not edit them.
        box.appendChild(h("p", { class: "muted", text: "Expansion maps inside " + x.name + ": " +
          x.expansions.map(function (n) { return n.name; }).join(", ") + ". Edit them in the YAML; saving keeps them." }));
      }
      box.appendChild(h("p", {}, [h("button", { type: "button", class: "secondary danger", id: id + "-remove-expansion", text: "Remove expansion map " + x.name, onclick: function () {
        em.expansions.splice(i, 1);
        changed();
        renderExpansions();
        markFields();
        document.getElementById("ed-add-expansion").focus();
        announce("Expansion map " + x.name + " removed.");
      } })]));
      body.appendChild(box);
    });
    if (em.expansions.length === 0) {
      body.appendChild(h("p", { class: "muted", text: "No expansion maps: no FHIR array is synced to child CRM rows." }));
    }
    body.appendChild(h("p", {}, [h("button", { type: "button", id: "ed-add-expansion", text: "Add expansion map", onclick: function () {
      em.expansions.push({ name: uniqueName(em.expansions, "expansion"), fhirPath: "", crmEntity: "", crmEntitySet: "", parentLookup: "", matchKey: [], onRemove: "delete", attributes: [] });
      changed();
      renderExpansions();
      markFields();
      document.getElementById("x" + (em.expansions.length - 1) + "-name").focus();
      announce("Expansion map added; name it and choose its FHIR array and CRM child table.");
    } })]));
  }

  // valueMapOptions finds the CRM option set a value map translates: the
  // options of an attribute that uses it.
  function valueMapOptions(name) {
    var found = null;
    (doc.entityMaps || []).forEach(function (em) {
      function look(entity, attrs) {
        (attrs || []).forEach(function (a) {
          if (!found && a.valueMap === name) {
            var meta = crmAttr(entity, a.crmAttribute);
            if (meta && meta.options && meta.options.length) {
              found = { entity: entity, attribute: a.crmAttribute, options: meta.options };
            }
          }
        });
      }
      look(em.crmEntity, em.attributes);
      (em.expansions || []).forEach(function (x) { look(x.crmEntity, x.attributes); });
    });
    return found;
  }

  var openValueMaps = {}; // value map index -> shown

  // usedBy names the attribute maps (entity map/attribute) using value map name.
  function usedBy(name) {
    var out = [];
    (doc.entityMaps || []).forEach(function (em) {
      (em.attributes || []).forEach(function (a) {
        if (a.valueMap === name) {
          out.push(em.name + "/" + a.name);
        }
      });
      (em.expansions || []).forEach(function (x) {
        (x.attributes || []).forEach(function (a) {
          if (a.valueMap === name) {
            out.push(em.name + "/" + x.name + "/" + a.name);
          }
        });
      });
    });
    return out;
  }

  function renderValueMaps() {
    var body = document.getElementById("ed-valuemaps-body");
    body.textContent = "";
    doc.valueMaps = doc.valueMaps || [];
    body.appendChild(h("p", { class: "muted", text: "Value maps are shared by every entity map of the set. CRM labels come from the CRM's metadata of an attribute that uses the value map." }));
    doc.valueMaps.forEach(function (vm, i) {
      var id = "vm" + i;
      vm.entries = vm.entries || [];
      var opts = valueMapOptions(vm.name);
      var box = h("fieldset", { class: "ed-group valuemap", "data-valuemap": vm.name }, [h("legend", { text: "Value map " + vm.name })]);
      var outer = h("details", { class: "valuemap-details", id: id + "-details", open: openValueMaps[i] || false }, [
        h("summary", { text: vm.name + " (" + vm.entries.length + " entries" + (usedBy(vm.name).length ? ", used by " + usedBy(vm.name).join(", ") : ", not used") + ")" }), box]);
      outer.addEventListener("toggle", function () { openValueMaps[i] = outer.open; });
      box.appendChild(h("div", { class: "ed-grid" }, [
        field("Name", id + "-name", vm.name, function (v) { vm.name = v; }, { field: "name" }),
        field("Description", id + "-description", vm.description, function (v) { setOrDelete(vm, "description", v); }, { field: "description" }),
        field("FHIR code system", id + "-system", vm.system, function (v) { setOrDelete(vm, "system", v); }, { field: "system" }),
        field("Values not listed", id + "-unmapped", vm.unmapped || "error", function (v) { setOrDelete(vm, "unmapped", v === "error" ? "" : v); },
          { kind: "select", options: [["error", "Fail the record (mapping error)"], ["skip", "Leave the target unset"], ["default", "Use the defaults below"]], field: "unmapped" }),
        field("Default CRM value", id + "-defaultCRM", vm.defaultCRM, function (v) { setOrDelete(vm, "defaultCRM", num(v)); }, { kind: "number", field: "defaultCRM" }),
        field("Default FHIR code", id + "-defaultFHIR", vm.defaultFHIR, function (v) { setOrDelete(vm, "defaultFHIR", v); }, { field: "defaultFHIR" })
      ]));
      var tbody = h("tbody");
      vm.entries.forEach(function (en, j) {
        var eid = id + "-e" + j;
        var label = "";
        var crmCell;
        if (opts) {
          var sel = h("select", { id: eid + "-crm", "aria-label": "CRM value of entry " + (j + 1) });
          var known = false;
          opts.options.forEach(function (o) {
            sel.appendChild(h("option", { value: String(o.value), text: o.value + " \u2014 " + o.label }));
            if (o.value === en.crm) {
              known = true;
              label = o.label;
            }
          });
          if (!known) {
            sel.appendChild(h("option", { value: String(en.crm), text: en.crm + " \u2014 not an option in the CRM" }));
            label = "not an option of " + opts.entity + "." + opts.attribute;
          }
          sel.value = String(en.crm);
          sel.addEventListener("change", function () {
            en.crm = Number(sel.value);
            changed();
            var o = opts.options.filter(function (x) { return x.value === en.crm; })[0];
            document.getElementById(eid + "-label").textContent = o ? o.label : "";
          });
          crmCell = sel;
        } else {
          crmCell = h("input", { type: "number", id: eid + "-crm", "aria-label": "CRM value of entry " + (j + 1), value: String(en.crm) });
          crmCell.addEventListener("input", function () { en.crm = num(crmCell.value); changed(); });
          label = hasCRM ? "no attribute of the CRM uses this value map yet" : "";
        }
        var fhir = h("input", { type: "text", id: eid + "-fhir", "aria-label": "FHIR code of entry " + (j + 1), value: en.fhir, autocomplete: "off" });
        fhir.addEventListener("input", function () { en.fhir = fhir.value; changed(); });
        tbody.appendChild(h("tr", {}, [
          h("td", {}, [crmCell]),
          h("td", { id: eid + "-label", text: label }),
          h("td", {}, [fhir]),
          h("td", {}, [h("button", { type: "button", class: "secondary danger", id: eid + "-remove", "aria-label": "Remove entry " + (j + 1) + " of " + vm.name, text: "Remove",
            onclick: function () {
              vm.entries.splice(j, 1);
              openValueMaps[i] = true;
              changed();
              renderValueMaps();
              var next = document.getElementById(id + "-e" + Math.min(j, vm.entries.length - 1) + "-remove") || document.getElementById(id + "-add-entry");
              next.focus();
              announce("Entry removed from " + vm.name + ".");
            } })])
        ]));
      });
      box.appendChild(h("table", { class: "list valuemap-table", id: id + "-entries" }, [
        h("caption", { text: "Entries of " + vm.name + (opts ? " (labels of " + opts.entity + "." + opts.attribute + ")" : "") }),
        h("thead", {}, [h("tr", {}, [h("th", { scope: "col", text: "CRM value" }), h("th", { scope: "col", text: "CRM label" }),
          h("th", { scope: "col", text: "FHIR code" }), h("th", { scope: "col", text: "Remove" })])]), tbody]));
      box.appendChild(h("p", { class: "actions" }, [
        h("button", { type: "button", id: id + "-add-entry", text: "Add entry", onclick: function () {
          var used = vm.entries.map(function (e) { return e.crm; });
          var next = opts ? opts.options.filter(function (o) { return used.indexOf(o.value) < 0; })[0] : null;
          vm.entries.push({ crm: next ? next.value : 0, fhir: "" });
          openValueMaps[i] = true;
          changed();
          renderValueMaps();
          document.getElementById(id + "-e" + (vm.entries.length - 1) + "-fhir").focus();
          announce("Entry added to " + vm.name + ".");
        } }),
        h("button", { type: "button", class: "secondary danger", id: id + "-remove-map", text: "Remove value map " + vm.name, onclick: function () {
          doc.valueMaps.splice(i, 1);
          changed();
          renderValueMaps();
          document.getElementById("ed-add-valuemap").focus();
          announce("Value map " + vm.name + " removed.");
        } })
      ]));
      body.appendChild(outer);
    });
    body.appendChild(h("p", {}, [h("button", { type: "button", id: "ed-add-valuemap", text: "Add value map", onclick: function () {
      doc.valueMaps.push({ name: uniqueName(doc.valueMaps, "value-map"), entries: [] });
      openValueMaps[doc.valueMaps.length - 1] = true;
      changed();
      renderValueMaps();
      document.getElementById("vm" + (doc.valueMaps.length - 1) + "-name").focus();
    } })]));
  }

  // ---- samples ------------------------------------------------------------

  var sampleTimer = null;
  var sampleSeq = 0;

  // samplesStale drops the shown results (and any run under way) when the
  // draft changes: the samples run again once the change is checked, and
  // no button acts on a result of an earlier state.
  function samplesStale() {
    sampleSeq++;
    clearTimeout(sampleTimer);
    if (sampleResults !== null) {
      sampleResults = null;
      renderSampleResults();
      var box = document.getElementById("ed-sample-results");
      if (box) {
        box.appendChild(h("p", { class: "muted", text: "The samples run again once the change is checked\u2026" }));
      }
    }
  }

  function runSamples() {
    clearTimeout(sampleTimer);
    sampleTimer = setTimeout(function () {
      var em = currentMap();
      if (!em) {
        return;
      }
      var mine = ++sampleSeq;
      post("/api/v1/maps/samples", { yaml: yamlArea.value, map: em.name }).then(function (r) {
        if (mine !== sampleSeq || pushTimer || pullTimer) {
          return; // a newer change runs them again
        }
        sampleResults = r.ok ? r.body.results : { error: (r.body.error && r.body.error.message) || "The samples cannot run." };
        renderSampleResults();
      }).catch(function () {});
    }, 400);
  }

  function renderSamples() {
    var body = document.getElementById("ed-samples-body");
    body.textContent = "";
    var em = currentMap();
    if (!em) {
      return;
    }
    var withResource = (em.samples || []).filter(function (s) {
      return (s.direction === "fhir-to-crm" && s.input) || (s.direction === "crm-to-fhir" && s.base);
    });
    if (withResource.length) {
      var cur = sampleResource();
      var pick = h("select", { id: "ed-sample" });
      withResource.forEach(function (s) { pick.appendChild(h("option", { value: s.name, text: s.name + " (" + s.direction + ")" })); });
      pick.value = cur ? cur.name : "";
      pick.addEventListener("change", function () {
        sampleName = pick.value;
        renderAll();
        announce("FHIR paths are now evaluated on sample " + sampleName + ".");
      });
      body.appendChild(h("div", { class: "ed-field" }, [h("label", { for: "ed-sample", text: "FHIR paths are evaluated on sample" }), pick]));
    } else {
      body.appendChild(h("p", { class: "muted", text: "This entity map has no sample with a FHIR resource, so paths cannot be evaluated live; add one in the YAML (samples)." }));
    }
    body.appendChild(h("div", { id: "ed-sample-results", "aria-live": "polite" }));
    renderSampleResults();
  }

  function renderSampleResults() {
    var box = document.getElementById("ed-sample-results");
    if (!box) {
      return;
    }
    box.textContent = "";
    var em = currentMap();
    if (!sampleResults || !em) {
      return;
    }
    if (sampleResults.error) {
      box.appendChild(h("p", { class: "muted", text: sampleResults.error }));
      return;
    }
    var failed = sampleResults.filter(function (r) { return !r.passed; }).length;
    box.appendChild(h("p", { id: "ed-samples-summary", text: sampleResults.length === 0 ? "This entity map has no samples." :
      (failed === 0 ? "All " + sampleResults.length + " samples of " + em.name + " pass with the draft as edited." :
        failed + " of " + sampleResults.length + " samples of " + em.name + " fail with the draft as edited; publishing needs them to pass, or a reason.") }));
    var ul = h("ul", { class: "sample-results" });
    sampleResults.forEach(function (r, i) {
      var li = h("li", { "data-sample": r.sample }, [h("strong", { text: r.sample }), " ",
        h("span", { class: "status " + (r.passed ? "status-published" : "status-failed"), text: r.passed ? "passes" : "fails" })]);
      if (!r.passed) {
        var detail = (r.error ? [r.error] : []).concat(r.mismatches || []);
        if (detail.length) {
          li.appendChild(h("ul", {}, detail.map(function (m) { return h("li", { text: m }); })));
        }
        if (!r.error && r.decision) {
          li.appendChild(h("button", { type: "button", class: "secondary", id: "ed-accept-" + i, text: "Expect this result",
            "aria-label": "Expect this result in sample " + r.sample, onclick: function () { accept(r); } }));
        }
      }
      ul.appendChild(li);
    });
    box.appendChild(ul);
  }

  // accept makes a sample expect what the edited map now produces.
  function accept(r) {
    var em = currentMap();
    (em.samples || []).forEach(function (s) {
      if (s.name !== r.sample) {
        return;
      }
      s.expect = s.expect || {};
      s.expect.decision = r.decision;
      setOrDelete(s.expect, "filter", r.filter || "");
      setOrDelete(s.expect, "attribute", r.attribute || "");
      if (r.output !== undefined && r.output !== null) {
        s.expect.output = JSON.stringify(r.output, null, 2) + "\n";
      } else {
        delete s.expect.output;
      }
      if (s.expect.changed) {
        s.expect.changed = r.changed || [];
      }
    });
    changed();
    announce("Sample " + r.sample + " now expects the current result.");
    var box = document.getElementById("ed-sample-results");
    if (box) {
      box.setAttribute("tabindex", "-1");
      box.focus();
    }
  }

  // ---- start ----------------------------------------------------------------

  document.getElementById("editor-noscript").hidden = true;
  if (root.dataset.unsaved === "true") {
    // A refused save: the text area holds what was not saved.
    savedYAML = null;
    setDirty(true);
  }
  pullYAML(true);
})();
