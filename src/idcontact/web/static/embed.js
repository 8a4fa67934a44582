// The embedded attribute panel (agent_embed.html) in an agent desktop's frame.
// Live: on each console event (ids and states only) ask /now what the panel should show, and
// reload when that changed; /now reads no attributes, so an idle panel audits nothing.
// Login: a pop-up logs in on this site and posts back a one-time code (login-popup.js), which
// this frame redeems for a partitioned cookie of its own.
(function () {
  "use strict";
  var box = document.getElementById("embed");
  if (box && window.EventSource) {
    var pending = null;
    var check = function () {
      pending = null;
      fetch(box.dataset.nowUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body || body.now !== box.dataset.now) location.href = box.dataset.reload;
        })
        .catch(function () {}); // offline: the event source reconnects and asks again
    };
    var soon = function () { if (!pending) pending = setTimeout(check, 200); };
    var source = new EventSource(box.dataset.events);
    source.addEventListener("queue", soon);
    source.addEventListener("hello", soon); // after a reconnect, catch up
  }

  var login = document.getElementById("embed-login");
  if (login) {
    var status = document.getElementById("embed-login-status");
    login.addEventListener("click", function (event) {
      event.preventDefault();
      var popup = window.open(login.href, "idcontact-login", "popup,width=520,height=700");
      if (!popup) status.textContent = "Het venster werd geblokkeerd. Sta pop-ups toe voor deze pagina.";
    });
    window.addEventListener("message", function (event) {
      if (event.origin !== location.origin || !event.data) return;
      if (event.data.type !== "idcontact-embed-login") return;
      var body = new URLSearchParams();
      body.set("code", String(event.data.code || ""));
      status.textContent = "Bezig met inloggen…";
      fetch(login.dataset.session, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 204) { location.reload(); return; }
          status.textContent = "Inloggen is niet gelukt. Probeer het opnieuw.";
        })
        .catch(function () { status.textContent = "Geen verbinding. Probeer het opnieuw."; });
    });
  }
}());
