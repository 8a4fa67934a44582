// Live console: on each event from the server (ids and states only), reload a part of the
// page from the server. The list (#live) reloads its board; a phone call's attribute panel
// (#line) reloads only its line state, which is no read of the data, and the whole page when
// the conversation's state changed (wrap-up after a hang-up). Without JavaScript the console
// works too: "Vernieuwen" reloads the page.
(function () {
  "use strict";
  if (!window.EventSource) return;
  function replace(url, id, apply) {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (r.status === 401) { location.href = "/agent/login"; } return r.text(); })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html;
        var fresh = box.querySelector("#" + id);
        if (fresh) apply(fresh);
      });
  }

  var live = document.getElementById("live");
  if (live) {
    var pending = null;
    var reload = function () {
      pending = null;
      replace(live.dataset.board, "board", function (fresh) {
        var old = document.getElementById("board");
        if (old) old.replaceWith(fresh);
      });
    };
    var soon = function () { if (!pending) pending = setTimeout(reload, 150); };
    var source = new EventSource(live.dataset.events);
    source.addEventListener("queue", function (message) {
      // This agent's own presence changed (on another tab, say): redraw the whole page.
      if (JSON.parse(message.data).key.indexOf("agent:") === 0) { location.reload(); } else { soon(); }
    });
    source.addEventListener("hello", soon);  // after a reconnect, catch up
  }

  var line = document.getElementById("line");
  if (line) {
    var panel = new EventSource(line.dataset.events);
    panel.addEventListener("queue", function (message) {
      var data = JSON.parse(message.data);
      if (data.id !== line.dataset.id) return;
      if (data.state !== line.dataset.state) { location.reload(); return; }
      replace(line.dataset.line, "line", function (fresh) { line.innerHTML = fresh.innerHTML; });
    });
  }
}());
