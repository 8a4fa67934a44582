// Live console: on each event from the server (ids and states only), reload the list part.
// Without JavaScript the console works too: "Vernieuwen" reloads the page.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var pending = null;
  function reload() {
    pending = null;
    fetch(live.dataset.board, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (r.status === 401) { location.href = "/agent/login"; } return r.text(); })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html;
        var fresh = box.querySelector("#board");
        var old = document.getElementById("board");
        if (fresh && old) old.replaceWith(fresh);
      });
  }
  function soon() { if (!pending) pending = setTimeout(reload, 150); }
  var source = new EventSource(live.dataset.events);
  source.addEventListener("queue", function (message) {
    // This agent's own presence changed (on another tab, say): redraw the whole page.
    if (JSON.parse(message.data).key.indexOf("agent:") === 0) { location.reload(); } else { soon(); }
  });
  source.addEventListener("hello", soon);  // after a reconnect, catch up
}());
