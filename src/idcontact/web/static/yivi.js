// The Yivi page, live: when the session's status changes the server renders the next step.
// Progressive enhancement only: without this script the page refreshes itself every 5 s.
(function () {
  "use strict";

  var box = document.getElementById("yivi");
  if (!box || typeof window.EventSource !== "function") {
    return;
  }
  var shown = box.getAttribute("data-status");
  var source = new EventSource(box.getAttribute("data-events-url"));
  source.addEventListener("message", function (event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (!data || typeof data.status !== "string" || data.status === shown) {
      return;
    }
    source.close();
    if (data.status === "DONE" || data.status === "CANCELLED" || data.status === "TIMEOUT") {
      window.location.assign(box.getAttribute("data-done-url"));
    } else {
      window.location.reload();
    }
  });
})();
