(function () {
  "use strict";

  // Everything shown comes from the snapshot, whose text is untrusted (names, errors): the DOM is
  // built with createElement and textContent only.
  var TOKEN_KEY = "brainmigrate.timeline.token";
  var FORMAT = 1;
  var PHASES = ["expanding", "backfilling", "validating", "cutting_over", "ready_to_contract", "contracting", "completed"];
  var STOPPED = ["compensating", "rolled_back", "failed", "abandoned"];
  var LEGEND = [
    ["completed", "completed"], ["running", "running"], ["failed", "failed"], ["dirty", "dirty"],
    ["rolled_back", "rolled back"], ["stamped", "stamped"], ["abandoned", "abandoned"], ["pending", "pending"]
  ];

  var config = JSON.parse(document.getElementById("timeline-config").textContent);
  var state = { snapshot: config.snapshot, selected: null, problem: null, needToken: false, live: false };

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function storage() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function takeToken() {
    // The fragment never reaches the server; keep the token for this tab and drop it from the address.
    var fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    var token = fragment.get("token");
    var store = storage();
    if (token) {
      if (store) { store.setItem(TOKEN_KEY, token); }
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
      return token;
    }
    return store ? store.getItem(TOKEN_KEY) : null;
  }

  var token = config.data_url ? takeToken() : null;

  function time(value) {
    if (!value) { return "\u2014"; }
    var date = new Date(value);
    if (isNaN(date.getTime())) { return String(value); }
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function clock(ms, span) {
    var text = new Date(ms).toISOString();
    return span > 86400000 ? text.slice(5, 16).replace("T", " ") : text.slice(11, 19) + "Z";
  }

  function seconds(value) {
    if (value === null || value === undefined || !isFinite(value)) { return "\u2014"; }
    if (value < 1) { return Math.round(value * 1000) + " ms"; }
    if (value < 60) { return value.toFixed(value < 10 ? 1 : 0) + " s"; }
    if (value < 3600) { return Math.floor(value / 60) + " min " + Math.round(value % 60) + " s"; }
    return Math.floor(value / 3600) + " h " + Math.round((value % 3600) / 60) + " min";
  }

  function count(value) {
    return value === null || value === undefined ? "?" : Number(value).toLocaleString("en-US");
  }

  function shownStatus(attempt) {
    // What an attempt did, as a person reads it: a completed rollback is "rolled back".
    if (attempt.status === "completed") {
      if (attempt.operation === "rollback") { return "rolled_back"; }
      if (attempt.operation === "stamp") { return "stamped"; }
      if (attempt.operation === "abandon") { return "abandoned"; }
      if (attempt.operation === "resolve") { return "resolved"; }
    }
    return attempt.status;
  }

  function words(status) { return String(status || "unknown").replace(/_/g, " "); }

  function attemptLabel(group, attempt) {
    var label = "#" + attempt.id + " ";
    if (attempt.migration_id !== group.id) { label += attempt.migration_id + " "; }
    return label + attempt.operation;
  }

  function bounds(snapshot) {
    var now = Date.parse(snapshot.generated_at);
    var first = Infinity;
    var last = -Infinity;
    snapshot.migrations.forEach(function (group) {
      group.attempts.forEach(function (attempt) {
        var start = Date.parse(attempt.started_at);
        var end = attempt.finished_at ? Date.parse(attempt.finished_at) : now;
        first = Math.min(first, start);
        last = Math.max(last, end, start);
      });
      group.running.forEach(function (run) {
        first = Math.min(first, Date.parse(run.started_at));
        last = Math.max(last, now);
      });
    });
    if (!isFinite(first)) { return null; }
    var span = Math.max(last - first, 1000);
    return { start: first - span * 0.02, span: span * 1.04, now: now };
  }

  function position(range, start, end) {
    var left = ((start - range.start) / range.span) * 100;
    var width = ((end - start) / range.span) * 100;
    return { left: Math.max(0, Math.min(left, 99)), width: Math.max(0, Math.min(width, 100 - left)) };
  }

  function renderHeader(snapshot) {
    var header = el("header", "top");
    header.appendChild(el("h1", null, "Migration timeline"));
    if (snapshot) {
      header.appendChild(el("span", "meta", "schema " + snapshot.schema));
      header.appendChild(el("span", "meta", snapshot.attempt_count + " attempts, " +
        snapshot.migrations.length + " migrations"));
      header.appendChild(el("span", "meta", "as of " + time(snapshot.generated_at)));
    }
    var live = config.data_url ? (state.live ? "live" : "not connected") : "snapshot";
    header.appendChild(el("span", "live " + (state.live ? "on" : "off"), live));
    return header;
  }

  function renderTokenForm() {
    var form = el("form", "token");
    form.id = "token-form";
    var label = el("label", null, "Read token");
    label.htmlFor = "token-input";
    var input = el("input");
    input.id = "token-input";
    input.type = "password";
    input.autocomplete = "off";
    input.placeholder = "bearer token with read access";
    var button = el("button", null, "Show timeline");
    button.type = "submit";
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(button);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var value = input.value.trim();
      if (!value) { return; }
      token = value;
      var store = storage();
      if (store) { store.setItem(TOKEN_KEY, value); }
      state.needToken = false;
      state.problem = null;
      render();
      poll();
    });
    return form;
  }

  function renderLegend() {
    var legend = el("div", "legend");
    LEGEND.forEach(function (item) { legend.appendChild(el("span", "status-" + item[0], item[1])); });
    return legend;
  }

  function renderAxis(range) {
    var axis = el("div", "axis");
    for (var i = 0; i <= 4; i += 1) {
      var tick = el("span", "tick", clock(range.start + (range.span * i) / 4, range.span));
      tick.style.left = (i * 25) + "%";
      axis.appendChild(tick);
    }
    return axis;
  }

  function renderPhases(hybrid) {
    var list = el("ol", "phases");
    list.setAttribute("aria-label", "phases");
    var at = PHASES.indexOf(hybrid.phase);
    PHASES.forEach(function (phase, index) {
      if (phase === "ready_to_contract" && hybrid.contract_mode !== "manual") { return; }
      var item = el("li", null, words(phase));
      if (at >= 0 && (index < at || hybrid.phase === "completed")) { item.className = "done"; }
      if (index === at && hybrid.phase !== "completed") { item.className = "current"; }
      list.appendChild(item);
    });
    if (STOPPED.indexOf(hybrid.phase) >= 0) { list.appendChild(el("li", "stopped", words(hybrid.phase))); }
    return list;
  }

  function renderProgress(progress, live) {
    var box = el("div", "progress" + (live ? " running" : " settled"));
    box.setAttribute("data-progress-for", progress.migration_id);
    var title = live ? progress.migration_id + ": " + words(progress.status) :
      "latest run: " + words(progress.status);
    box.appendChild(el("div", "title", title));
    if (live || progress.fraction !== null) {
      var bar = el("div", "bar");
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", progress.total === null ? "" : String(progress.total));
      bar.setAttribute("aria-valuenow", String(progress.done));
      var fill = el("div", "fill");
      fill.style.width = ((progress.fraction || 0) * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      box.appendChild(bar);
    }
    var figures = el("div", "figures");
    var share = progress.fraction === null ? "" : " (" + Math.floor(progress.fraction * 100) + "%)";
    figures.appendChild(el("span", "items", count(progress.done) + " / " + count(progress.total) + " items" + share));
    if (progress.failed) { figures.appendChild(el("span", "failed", count(progress.failed) + " failed")); }
    if (live) {
      figures.appendChild(el("span", "rate", "rate " + (progress.rate ? progress.rate.toFixed(1) + " items/s" : "\u2014")));
      figures.appendChild(el("span", "eta", "ETA " + seconds(progress.eta_seconds)));
      figures.appendChild(el("span", "batches", "batch " + progress.batch_number));
    }
    box.appendChild(figures);
    return box;
  }

  function renderGroup(group, range) {
    var section = el("section", "group kind-" + group.kind);
    section.setAttribute("data-migration-id", group.id);
    var title = el("h2");
    title.appendChild(el("span", "name", group.name));
    title.appendChild(el("span", "mid", group.id));
    title.appendChild(el("span", "badge kind", group.kind));
    var status = group.status || "unknown";
    title.appendChild(el("span", "badge status status-" + status, words(status)));
    section.appendChild(title);
    if (group.hybrid) {
      section.appendChild(renderPhases(group.hybrid));
      var steps = group.hybrid.steps_done.length + " of " + group.hybrid.steps.length + " steps done";
      if (group.hybrid.current_step) { steps += ", at " + group.hybrid.current_step; }
      section.appendChild(el("p", "steps", steps));
    }
    group.running.forEach(function (progress) { section.appendChild(renderProgress(progress, true)); });
    if (!group.running.length && group.progress) { section.appendChild(renderProgress(group.progress, false)); }
    if (!group.attempts.length && !group.running.length) { section.appendChild(el("p", "steps", "not run yet")); }
    group.attempts.forEach(function (attempt) {
      var shown = shownStatus(attempt);
      var took = attempt.duration_ms === null ? null : seconds(attempt.duration_ms / 1000);
      var bar = lane(section, range, attemptLabel(group, attempt), shown, words(shown), "attempt:" + attempt.id,
        attempt.started_at, attempt.finished_at, took);
      bar.setAttribute("data-attempt-id", String(attempt.id));
    });
    group.running.forEach(function (run) {
      var share = run.fraction === null ? "" : " " + Math.floor(run.fraction * 100) + "%";
      var bar = lane(section, range, run.migration_id + " run", run.status, words(run.status) + share,
        "run:" + run.migration_id, run.started_at, null, null);
      bar.setAttribute("data-run-id", run.migration_id);
    });
    return section;
  }

  function lane(section, range, label, status, text, key, started, finished, caption) {
    // One row of the chart: a label, and a bar from start to finish (or to now) on the time axis,
    // with its duration beside it.
    var row = el("div", "lane");
    row.appendChild(el("span", "label", label));
    var track = el("div", "track");
    [0, 25, 50, 75, 100].forEach(function (at) {
      var line = el("span", "grid");
      line.style.left = at + "%";
      track.appendChild(line);
    });
    var bar = el("button", "attempt status-" + status, text);
    bar.type = "button";
    bar.setAttribute("aria-label", label + " " + text);
    bar.title = label + " \u00b7 " + text + " \u00b7 " + time(started);
    if (state.selected === key) { bar.className += " selected"; }
    var start = Date.parse(started);
    var place = position(range, start, finished ? Date.parse(finished) : range.now);
    bar.style.left = place.left + "%";
    bar.style.width = place.width + "%";
    bar.addEventListener("click", function () {
      state.selected = key;
      render();
    });
    track.appendChild(bar);
    if (caption) {
      var note = el("span", "caption", caption);
      if (place.left + place.width > 80) {
        note.style.right = (100 - place.left) + "%";
        note.className += " before";
      } else {
        note.style.left = (place.left + place.width) + "%";
      }
      track.appendChild(note);
    }
    row.appendChild(track);
    section.appendChild(row);
    return bar;
  }

  function find(snapshot, key) {
    // The attempt ("attempt:<id>") or run in flight ("run:<migration id>") a bar stands for.
    for (var i = 0; i < snapshot.migrations.length; i += 1) {
      var group = snapshot.migrations[i];
      for (var j = 0; j < group.attempts.length; j += 1) {
        if ("attempt:" + group.attempts[j].id === key) { return { attempt: group.attempts[j] }; }
      }
      for (var k = 0; k < group.running.length; k += 1) {
        if ("run:" + group.running[k].migration_id === key) { return { run: group.running[k] }; }
      }
    }
    return null;
  }

  function renderDetails(snapshot) {
    var panel = el("aside", "details");
    panel.id = "details";
    panel.setAttribute("aria-label", "attempt details");
    var found = state.selected === null ? null : find(snapshot, state.selected);
    if (!found) { panel.hidden = true; return panel; }
    var attempt = found.attempt;
    var run = found.run;
    var header = el("header");
    header.appendChild(el("h2", null, attempt ? "Attempt #" + attempt.id : "Run of " + run.migration_id));
    var close = el("button", "close", "Close");
    close.type = "button";
    close.addEventListener("click", function () { state.selected = null; render(); });
    header.appendChild(close);
    panel.appendChild(header);
    var list = el("dl");
    function row(term, value, pre) {
      if (value === null || value === undefined || value === "") { return; }
      list.appendChild(el("dt", null, term));
      var dd = el("dd");
      dd.setAttribute("data-field", term);
      if (pre) { dd.appendChild(el("pre", null, value)); } else { dd.textContent = String(value); }
      list.appendChild(dd);
    }
    if (run) {
      row("Status", words(run.status));
      row("Started", time(run.started_at));
      row("Updated", time(run.updated_at));
      row("Items", count(run.done) + " of " + count(run.total) + " (" + count(run.processed) + " written, " +
        count(run.skipped) + " skipped, " + count(run.failed) + " failed)");
      row("Rate", run.rate ? run.rate.toFixed(1) + " items/s" : null);
      row("ETA", run.eta_seconds === null ? null : seconds(run.eta_seconds));
      row("Batches", run.batch_number);
      row("Workers", run.workers);
      row("Error", run.error, true);
      panel.appendChild(list);
      return panel;
    }
    row("Migration", attempt.name + " (" + attempt.migration_id + ")");
    if (attempt.hybrid_id && attempt.hybrid_id !== attempt.migration_id) { row("Hybrid", attempt.hybrid_id); }
    row("Kind", attempt.kind + " (" + attempt.migration_type + ")");
    row("Operation", attempt.operation);
    row("Status", words(shownStatus(attempt)));
    row("Hybrid phase", attempt.hybrid_phase && words(attempt.hybrid_phase));
    row("Started", time(attempt.started_at));
    row("Finished", attempt.finished_at ? time(attempt.finished_at) : "still running");
    row("Duration", attempt.duration_ms === null ? null : seconds(attempt.duration_ms / 1000));
    row("Ran by", attempt.ran_by);
    row("Reason", attempt.reason);
    row("Statement reached", attempt.statement_reached);
    row("Error class", attempt.error_class);
    row("Error", attempt.error_message, true);
    row("SQLSTATE", attempt.sqlstate);
    row("Version", attempt.version);
    panel.appendChild(list);
    return panel;
  }

  function render() {
    var root = document.getElementById("timeline");
    var snapshot = state.snapshot;
    root.replaceChildren();
    root.appendChild(renderHeader(snapshot));
    if (state.problem) { root.appendChild(el("p", "banner error", state.problem)); }
    if (state.needToken) { root.appendChild(renderTokenForm()); }
    if (!snapshot) { return; }
    if (snapshot.format !== FORMAT) {
      root.appendChild(el("p", "banner error", "this page reads timeline format " + FORMAT +
        ", the server sent " + snapshot.format + ": reload the page"));
      return;
    }
    root.appendChild(renderLegend());
    var layout = el("div", "layout");
    var chart = el("div", "chart");
    var range = bounds(snapshot);
    if (range) { chart.appendChild(renderAxis(range)); }
    if (!snapshot.migrations.length) { chart.appendChild(el("p", "empty", "no migrations have run yet")); }
    snapshot.migrations.forEach(function (group) {
      chart.appendChild(renderGroup(group, range || { start: 0, span: 1, now: 0 }));
    });
    layout.appendChild(chart);
    layout.appendChild(renderDetails(snapshot));
    root.appendChild(layout);
    // A bar too short for its status shows only its colour (the legend names it).
    root.querySelectorAll("button.attempt").forEach(function (bar) {
      if (bar.scrollWidth > bar.clientWidth + 1) { bar.classList.add("narrow"); }
    });
  }

  var timer = null;

  function schedule() {
    if (timer !== null) { window.clearTimeout(timer); }
    timer = window.setTimeout(poll, config.poll_ms);
  }

  function poll() {
    timer = null;
    if (!token) {
      state.needToken = true;
      state.live = false;
      render();
      return;
    }
    window.fetch(config.data_url, {
      headers: { "Authorization": "Bearer " + token, "Accept": "application/json" },
      cache: "no-store",
      credentials: "same-origin"
    }).then(function (response) {
      if (response.status === 401 || response.status === 403) {
        var store = storage();
        if (store) { store.removeItem(TOKEN_KEY); }
        token = null;
        state.live = false;
        state.needToken = true;
        state.problem = "the server refused the token (HTTP " + response.status + "): enter a read token";
        render();
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json().then(function (snapshot) {
        state.snapshot = snapshot;
        state.live = true;
        state.problem = null;
        render();
        schedule();
      });
    }).catch(function (error) {
      state.live = false;
      state.problem = "cannot read " + config.data_url + " (" + error.message + "); trying again";
      render();
      schedule();
    });
  }

  render();
  if (config.data_url) { poll(); }
})();
