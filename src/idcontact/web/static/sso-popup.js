// The end of a login in a pop-up window: tell the console that opened it (same origin only)
// and close; the console reloads itself with the new session.
(function () {
  "use strict";
  if (window.opener && !window.opener.closed) {
    try {
      window.opener.postMessage({ type: "idcontact-agent-login" }, window.location.origin);
    } catch (e) {
      return; // the opener is elsewhere now: leave the page up with its text
    }
    window.close();
  }
})();
