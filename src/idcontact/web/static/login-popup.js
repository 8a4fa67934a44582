// The end of a login in a pop-up window: tell the page that opened it (same origin only) and
// close. A console reloads itself with the new session; an embedded panel (agent_embed_hand_off)
// also gets a one-time code, which it redeems for a cookie of its own frame.
(function () {
  "use strict";
  if (!window.opener || window.opener.closed) return;
  var handOff = document.getElementById("hand-off");
  var message = handOff
    ? { type: "idcontact-embed-login", code: handOff.dataset.code }
    : { type: "idcontact-agent-login" };
  try {
    window.opener.postMessage(message, window.location.origin);
  } catch (e) {
    return; // the opener is elsewhere now: leave the page up with its text
  }
  window.close();
})();
