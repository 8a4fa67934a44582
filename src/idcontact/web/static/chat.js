// The chat window, live: messages and typing over the page's WebSocket, reconnecting (with the
// number of the last message it has, so nothing is lost). Without this script the window still
// works: the form posts the message and the page shows them all.
// Every text comes from the page (data-text-* attributes), so this file holds no language.
// The socket is shared with a video call's script (video.js): frames this file does not handle
// go to it as "idc:frame" events on the chat box, "idc:open" says the socket (re)opened, and
// an "idc:send" event on the box sends its detail as a frame. Frames that come before that
// script says "idc:listen" (it may load later than the socket opens) are kept for it.
(function () {
  "use strict";

  var box = document.getElementById("chat");
  if (!box || typeof window.WebSocket !== "function") {
    return;
  }
  var log = document.getElementById("chat-log");
  var typing = document.getElementById("chat-typing");
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-text");
  var me = box.getAttribute("data-me");
  var socket = null;
  var retry = 1000;
  var typingTimer = null;
  var lastTyped = 0;
  var listening = false;
  var early = [];
  var leaving = false;
  // Another form of the page (identify, log out, end) navigates away: a state change heard
  // meanwhile must not reload the page under it.
  document.addEventListener("submit", function (event) {
    if (event.target !== form) {
      leaving = true;
    }
  }, true);

  function lastSeq() {
    var items = log.querySelectorAll("li[data-seq]");
    return items.length ? Number(items[items.length - 1].getAttribute("data-seq")) : 0;
  }

  function show(message) {
    if (message.seq <= lastSeq()) {
      return;
    }
    var item = document.createElement("li");
    item.className = "msg from-" + message.from;
    item.setAttribute("data-seq", String(message.seq));
    var who = document.createElement("span");
    who.className = "who";
    who.textContent =
      (message.from === me ? box.getAttribute("data-text-you") : box.getAttribute("data-text-other")) + ":";
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text; // text, never HTML
    item.appendChild(who);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(text);
    log.appendChild(item);
    if (message.from !== me) {
      typing.textContent = "";
    }
  }

  function pass(data) {
    if (listening) {
      box.dispatchEvent(new CustomEvent("idc:frame", { detail: data }));
    } else if (early.length < 100) {
      early.push(data);
    }
  }

  function connect() {
    var url = new URL(box.getAttribute("data-ws"), window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("after", String(lastSeq()));
    socket = new WebSocket(url.toString());
    socket.addEventListener("open", function () {
      retry = 1000;
      box.setAttribute("data-connected", "true");
      box.dispatchEvent(new CustomEvent("idc:open"));
    });
    socket.addEventListener("message", function (event) {
      var data;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (data.type === "message") {
        show(data);
      } else if (data.type === "typing" && data.from !== me) {
        typing.textContent = box.getAttribute("data-text-typing");
        window.clearTimeout(typingTimer);
        typingTimer = window.setTimeout(function () {
          typing.textContent = "";
        }, 4000);
      } else if (data.type === "state") {
        // The state, and how far an identification asked in it is: another one has other
        // buttons, so the server renders the page again (a GET, never a repeated POST of the
        // form that led here).
        var key = data.state + "/" + (data.identify || "");
        var shown = box.getAttribute("data-state");
        if (leaving) {
          return;
        }
        if (shown && key !== shown) {
          window.location.assign(box.getAttribute("data-page"));
        } else {
          box.setAttribute("data-state", key);
        }
      } else {
        pass(data);
      }
    });
    socket.addEventListener("close", function (event) {
      if (event.code === 4404 && box.getAttribute("data-gone")) {
        // Transferred away (or gone): this window has nothing more to show.
        window.location.assign(box.getAttribute("data-gone"));
        return;
      }
      box.removeAttribute("data-connected");
      socket = null;
      window.setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    });
  }

  box.addEventListener("idc:listen", function () {
    listening = true;
    var frames = early;
    early = [];
    frames.forEach(pass);
    if (socket && socket.readyState === WebSocket.OPEN) {
      box.dispatchEvent(new CustomEvent("idc:open"));
    }
  });
  box.addEventListener("idc:send", function (event) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(event.detail));
    }
  });

  if (form && input) {
    form.addEventListener("submit", function (event) {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        return; // the form posts it instead
      }
      event.preventDefault();
      var text = input.value.trim();
      if (text) {
        socket.send(JSON.stringify({ type: "message", text: text }));
        input.value = "";
      }
    });
    input.addEventListener("input", function () {
      var now = Date.now();
      if (socket && socket.readyState === WebSocket.OPEN && now - lastTyped > 2000) {
        lastTyped = now;
        socket.send(JSON.stringify({ type: "typing" }));
      }
    });
  }
  connect();
})();
