// The waiting room, live: place in line and expected wait from the page's event stream.
// Progressive enhancement only: without this script the page's "refresh" link does the same.
// Every text comes from the page (data-text-* attributes), so this file holds no language.
(function () {
  "use strict";

  var room = document.getElementById("waiting-room");
  var status = document.getElementById("waiting-status");
  if (!room || !status || typeof window.EventSource !== "function") {
    return;
  }
  var shownState = room.getAttribute("data-state");
  var url = room.getAttribute("data-events-url");
  if (!url) {
    return;
  }

  function text(name) {
    return room.getAttribute("data-text-" + name) || "";
  }

  function fill(template, n) {
    return template.split("{n}").join(String(n));
  }

  // The same sentence the server renders (waiting_text in plugins/comm/demo.py).
  function describe(data) {
    if (typeof data.position !== "number") {
      return text("in-line");
    }
    var parts = [
      data.beyond === true
        ? fill(text("position-beyond"), data.position - 1)
        : fill(text("position"), data.position),
    ];
    if (data.open === false) {
      parts.push(text("closed"));
    } else if (typeof data.expected_seconds !== "number") {
      parts.push(text("wait-unknown"));
    } else {
      var minutes = Math.max(1, Math.ceil(data.expected_seconds / 60));
      parts.push(minutes === 1 ? text("wait-one") : fill(text("wait"), minutes));
    }
    if (data.open !== false && data.long_wait === true) {
      parts.push(text("long"));
    }
    return parts.join(" ");
  }

  var source = new EventSource(url);
  source.addEventListener("message", function (event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (!data || typeof data.state !== "string") {
      return;
    }
    if (data.state !== shownState) {
      // Another state has other texts and buttons: the server renders it.
      source.close();
      window.location.reload();
      return;
    }
    if (data.state === "waiting") {
      var line = describe(data);
      if (status.textContent !== line) {
        status.textContent = line; // a change only, so screen readers hear news only
      }
    }
  });
})();
