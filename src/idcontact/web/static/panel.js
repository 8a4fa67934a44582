// The attribute panel of a phone call: keep the line state (ringing, connected, no answer, a
// hijack warning) up to date without reloading the audited panel. A change of the
// conversation's state (the caller hung up: wrap-up) reloads the page.
(function () {
  "use strict";
  var line = document.getElementById("line");
  if (!line || !window.EventSource) return;
  function refresh() {
    fetch(line.dataset.line, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (r.status === 401) { location.href = "/agent/login"; } return r.text(); })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html;
        var fresh = box.querySelector("#line");
        if (fresh) line.innerHTML = fresh.innerHTML;
      });
  }
  var source = new EventSource(line.dataset.events);
  source.addEventListener("queue", function (message) {
    var data = JSON.parse(message.data);
    if (data.id !== line.dataset.id) return;
    if (data.state !== line.dataset.state) { location.reload(); } else { refresh(); }
  });
}());
