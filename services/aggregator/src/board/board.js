/*
 * board.js: the Andon board's live page. It follows /events (server-sent
 * events: an `event: board` with the whole board on connect and on every
 * change) and updates the page in place; it never reloads. The browser's
 * EventSource reconnects by itself; the connection indicator shows it.
 *
 * Board data is only ever written with textContent or as attribute values,
 * never as markup (and the page's content security policy runs no inline
 * script).
 *
 * DOM contract (tests rely on it; keep it stable):
 *
 *   #light-overall, #light-jidoka, #light-kanban, #light-andon,
 *   #light-kaizen, #light-heijunka, #light-tracing
 *       data-light = GREEN | YELLOW | RED (UNKNOWN until the first board).
 *       Each contains .reason (the reason code), .value and .detail (text):
 *       in the six tiles .value is the measured value as a number (its unit
 *       is in .unit), .state-name the light's name and .since when the light
 *       entered it; in #light-overall .value is the light's name (the
 *       overall light has no measurement of its own).
 *   #transitions
 *       an <ol>, newest first: one <li data-principle="KANBAN"
 *       data-from="YELLOW" data-to="RED"> per transition of the board.
 *   #connection
 *       data-state = live | reconnecting ("reconnecting" also before the
 *       first connection); body[data-connection] mirrors it.
 *   body
 *       data-updated-at = the board's updated_at, set after the rest of that
 *       board has been applied (wait on it, then read the page).
 *   #pool-<name> (one per pool in series.pools, e.g. #pool-fast, #pool-slow)
 *       .spark[data-series=throughput|error_rate|p99_ms|queue_depth], each
 *       holding an inline SVG sparkline and .latest (the newest value).
 */
(function () {
  "use strict";

  var PRINCIPLES = ["jidoka", "kanban", "andon", "kaizen", "heijunka", "tracing"];
  var LIGHTS = { GREEN: true, YELLOW: true, RED: true };
  var SERIES = ["throughput", "error_rate", "p99_ms", "queue_depth"];
  // Sparklines never scale below these, so a flat trickle does not look like a wall.
  var SCALE_FLOOR = { throughput: 1, error_rate: 1, p99_ms: 10, queue_depth: 10 };
  var SPARK_W = 240;
  var SPARK_H = 40;
  var SPARK_SLOTS = 120; // the board keeps up to 120 points per series
  var RETRY_MS = 2000; // when the browser gave up on the stream itself
  var FAVICON = { GREEN: "#1f8a3b", YELLOW: "#f2c200", RED: "#c8171e", UNKNOWN: "#3a414b" };

  var lastBoard = null;
  var lastTransitions = null;
  var source = null;
  var retryTimer = null;

  function $(selector, root) {
    return (root || document).querySelector(selector);
  }

  function setText(element, text) {
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  function lightOf(value) {
    return typeof value === "string" && LIGHTS[value] ? value : "UNKNOWN";
  }

  function isNumber(v) {
    return typeof v === "number" && isFinite(v);
  }

  // 1432 → "1432", 0.5312 → "0.53", 97.46 → "97.5": precision where it matters.
  function formatNumber(v) {
    if (!isNumber(v)) {
      return "–";
    }
    var abs = Math.abs(v);
    var digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
    return String(Number(v.toFixed(digits)));
  }

  function formatSeries(name, v) {
    if (!isNumber(v)) {
      return "–";
    }
    switch (name) {
      case "throughput":
        return formatNumber(v) + "/s";
      case "error_rate":
        return formatNumber(v) + " %";
      case "p99_ms":
        return v >= 1000 ? formatNumber(v / 1000) + " s" : formatNumber(v) + " ms";
      default:
        return String(Math.round(v));
    }
  }

  function parseTime(text) {
    var t = typeof text === "string" ? Date.parse(text) : NaN;
    return isNaN(t) ? null : t;
  }

  function pad2(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function clock(ms) {
    var d = new Date(ms);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function age(ms) {
    var s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 60) {
      return s + "s ago";
    }
    if (s < 3600) {
      return Math.floor(s / 60) + "m " + pad2(s % 60) + "s ago";
    }
    return Math.floor(s / 3600) + "h " + pad2(Math.floor((s % 3600) / 60)) + "m ago";
  }

  // "since 20:40:01 (3m 06s ago)"; the raw text when it is not a time.
  function sinceText(text) {
    var t = parseTime(text);
    if (t === null) {
      return typeof text === "string" && text ? "since " + text : "";
    }
    return "since " + clock(t) + " (" + age(t) + ")";
  }

  // --- connection ------------------------------------------------------

  function setConnection(state) {
    var element = $("#connection");
    if (element.getAttribute("data-state") !== state) {
      element.setAttribute("data-state", state);
      document.body.setAttribute("data-connection", state);
    }
    setText($(".text", element), state === "live" ? "live" : lastBoard ? "reconnecting…" : "connecting…");
  }

  function connect() {
    clearTimeout(retryTimer);
    var es = new EventSource("/events");
    source = es;
    es.addEventListener("open", function () {
      setConnection("live");
    });
    es.addEventListener("board", onBoard);
    es.addEventListener("error", function () {
      setConnection("reconnecting");
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an
      // answer that was not an event stream); start over after a pause.
      if (es.readyState === EventSource.CLOSED && source === es) {
        es.close();
        retryTimer = setTimeout(connect, RETRY_MS);
      }
    });
  }

  function onBoard(event) {
    var board;
    try {
      board = JSON.parse(event.data);
    } catch (e) {
      console.error("board: unreadable event", e);
      return;
    }
    if (!board || typeof board !== "object") {
      return;
    }
    setConnection("live");
    apply(board);
  }

  // --- applying a board --------------------------------------------------

  function apply(board) {
    lastBoard = board;
    applyOverall(board.overall || {});
    var lights = Array.isArray(board.lights) ? board.lights : [];
    for (var i = 0; i < lights.length; i++) {
      applyLight(lights[i] || {});
    }
    applySeries(board.series || {});
    applyTransitions(Array.isArray(board.transitions) ? board.transitions : []);
    refreshAges();
    document.body.setAttribute("data-updated-at", String(board.updated_at));
  }

  function applyOverall(overall) {
    var light = lightOf(overall.light);
    var element = $("#light-overall");
    element.setAttribute("data-light", light);
    setText($(".value", element), light);
    setText($(".reason", element), String(overall.reason || "–"));
    setText($(".detail", element), String(overall.detail || ""));
    document.title = light + " · TPS Andon";
    setFavicon(light);
  }

  function applyLight(l) {
    var principle = String(l.principle || "").toLowerCase();
    if (PRINCIPLES.indexOf(principle) < 0) {
      return;
    }
    var element = $("#light-" + principle);
    var light = lightOf(l.light);
    element.setAttribute("data-light", light);
    setText($(".state-name", element), light);
    setText($(".value", element), formatNumber(l.value));
    setText($(".unit", element), l.unit ? String(l.unit) : "");
    setText($(".reason", element), String(l.reason || "–"));
    setText($(".detail", element), String(l.detail || ""));
    element.setAttribute("data-since", String(l.since || ""));
  }

  function poolSection(name) {
    var id = "pool-" + String(name).toLowerCase().replace(/[^a-z0-9-]/g, "-");
    var section = document.getElementById(id);
    if (!section) {
      section = $("#pool-template").content.firstElementChild.cloneNode(true);
      section.id = id;
      setText($(".pool-name", section), String(name));
      $("#pool-list").appendChild(section);
    }
    return section;
  }

  function applySeries(series) {
    var pools = series.pools && typeof series.pools === "object" ? series.pools : {};
    var names = Object.keys(pools).sort(function (a, b) {
      // fast before slow, then by name
      var order = { fast: 0, slow: 1 };
      var oa = a in order ? order[a] : 2;
      var ob = b in order ? order[b] : 2;
      return oa - ob || (a < b ? -1 : a > b ? 1 : 0);
    });
    var interval = isNumber(series.interval_seconds) ? series.interval_seconds : 1;
    var longest = 0;
    names.forEach(function (name) {
      var section = poolSection(name);
      var pool = pools[name] || {};
      SERIES.forEach(function (key) {
        var values = Array.isArray(pool[key]) ? pool[key] : [];
        longest = Math.max(longest, values.length);
        var row = $('.spark[data-series="' + key + '"]', section);
        drawSpark(row, key, values);
      });
    });
    setText($("#series-span"), longest ? "last " + spanText(longest * interval) : "");
  }

  function spanText(seconds) {
    return seconds >= 120 ? Math.round(seconds / 60) + " min" : Math.round(seconds) + " s";
  }

  // An inline-SVG sparkline: oldest left, newest at the right edge, one slot
  // per point (up to 120), gaps where a point is null.
  function drawSpark(row, key, values) {
    var n = values.length;
    var max = SCALE_FLOOR[key] || 1;
    var latest = null;
    for (var i = 0; i < n; i++) {
      if (isNumber(values[i])) {
        max = Math.max(max, values[i]);
        latest = values[i];
      }
    }
    var slots = Math.max(n, SPARK_SLOTS);
    var step = SPARK_W / (slots - 1);
    var x0 = SPARK_W - (n - 1) * step;
    var top = 2;
    var bottom = SPARK_H - 1;
    var line = "";
    var area = "";
    var segment = [];
    function flush() {
      if (!segment.length) {
        return;
      }
      line += "M" + segment.join("L");
      if (segment.length === 1) {
        line += "h0.01"; // a lone point still shows (round caps)
      }
      var first = segment[0].split(",")[0];
      var last = segment[segment.length - 1].split(",")[0];
      area += "M" + first + "," + bottom + "L" + segment.join("L") + "L" + last + "," + bottom + "Z";
      segment = [];
    }
    for (var j = 0; j < n; j++) {
      var v = values[j];
      if (!isNumber(v)) {
        flush();
        continue;
      }
      var x = x0 + j * step;
      var y = bottom - (Math.max(0, v) / max) * (bottom - top);
      segment.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    flush();
    $(".line", row).setAttribute("d", line);
    $(".area", row).setAttribute("d", area);
    setText($(".latest", row), formatSeries(key, latest));
    row.setAttribute("title", $(".spark-label", row).textContent + ": peak " + formatSeries(key, max));
  }

  function applyTransitions(transitions) {
    var signature = JSON.stringify(transitions);
    if (signature === lastTransitions) {
      return;
    }
    lastTransitions = signature;
    var list = $("#transitions");
    var items = transitions.map(transitionItem);
    list.replaceChildren.apply(list, items);
    $("#no-transitions").hidden = items.length > 0;
  }

  function span(className, text, light) {
    var element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    if (light) {
      element.setAttribute("data-light", light);
    }
    return element;
  }

  function transitionItem(t) {
    t = t || {};
    var from = lightOf(t.from);
    var to = lightOf(t.to);
    var li = document.createElement("li");
    li.setAttribute("data-principle", String(t.principle || ""));
    li.setAttribute("data-from", from);
    li.setAttribute("data-to", to);
    var at = parseTime(t.at);
    var time = document.createElement("time");
    time.setAttribute("datetime", String(t.at || ""));
    time.textContent = at === null ? String(t.at || "") : clock(at);
    var what = span("what", String(t.principle || "?") + " ");
    what.appendChild(span("lightname", from, from));
    what.appendChild(document.createTextNode(" → "));
    what.appendChild(span("lightname", to, to));
    var reason = String(t.reason || "");
    if (isNumber(t.value)) {
      reason += " · " + formatNumber(t.value);
    }
    li.appendChild(time);
    li.appendChild(what);
    li.appendChild(span("reason", reason));
    if (t.detail) {
      li.appendChild(span("detail", String(t.detail)));
    }
    return li;
  }

  // Relative times ("3m 06s ago") move on between boards.
  function refreshAges() {
    PRINCIPLES.forEach(function (p) {
      var element = $("#light-" + p);
      setText($(".since", element), sinceText(element.getAttribute("data-since")));
    });
    if (lastBoard) {
      var t = parseTime(lastBoard.updated_at);
      setText($("#updated-at"), t === null ? String(lastBoard.updated_at || "–") : clock(t));
      setText($("#updated-age"), t === null ? "" : "(" + age(t) + ")");
    }
  }

  function setFavicon(light) {
    var link = $('link[rel="icon"]');
    if (!link) {
      link = document.createElement("link");
      link.rel = "icon";
      document.head.appendChild(link);
    }
    var svg =
      '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="' +
      FAVICON[light] +
      '"/></svg>';
    var href = "data:image/svg+xml," + encodeURIComponent(svg);
    if (link.getAttribute("href") !== href) {
      link.setAttribute("href", href);
    }
  }

  function start() {
    ["fast", "slow"].forEach(poolSection);
    setConnection("reconnecting");
    setInterval(refreshAges, 1000);
    connect();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
