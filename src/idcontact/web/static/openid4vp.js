// The wallet page, live: once the wallet has answered, go on to the outcome.
// Progressive enhancement only: without this script the page refreshes itself every 5 s.
(function () {
  "use strict";

  var box = document.getElementById("openid4vp");
  if (!box || typeof window.fetch !== "function") {
    return;
  }
  var statusUrl = box.getAttribute("data-status-url");
  var doneUrl = box.getAttribute("data-done-url");
  function poll() {
    window
      .fetch(statusUrl, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.json() : { status: "pending" };
      })
      .then(function (data) {
        if (data && (data.status === "done" || data.status === "failed")) {
          window.location.assign(doneUrl);
        } else {
          window.setTimeout(poll, 1500);
        }
      })
      .catch(function () {
        window.setTimeout(poll, 3000);
      });
  }
  window.setTimeout(poll, 1500);
})();
