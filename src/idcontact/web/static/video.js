// The video call: WebRTC between the resident's and the agent's browser, signalled over the
// chat's WebSocket (chat.js passes the frames on: "idc:frame", "idc:open", "idc:send").
//
// The protocol is small. Each page, once its camera and microphone are on (or refused) and the
// server has sent the TURN servers ("ice"), says {hello: {peer, media}}: peer is a random id
// of this page load. The agent's page calls (a new connection and an offer) when it hears a
// hello from a resident page it is not already connected to; the resident's page answers
// every offer with a new connection, and answers the agent's hello with its own hello. "bye"
// stops the video; the chat stays. The server relays only while the conversation is
// connected, and in relay-only mode passes on relay candidates only.
// Every text comes from the page (data-text-* attributes), so this file holds no language.
(function () {
  "use strict";

  var panel = document.getElementById("video");
  var chat = document.getElementById("chat");
  var status = document.getElementById("video-status");
  if (!panel || !chat || !status) {
    return;
  }

  function text(name) {
    return panel.getAttribute("data-text-" + name.replace(/_/g, "-")) || "";
  }

  function say(name) {
    panel.setAttribute("data-status", name);
    if (status.textContent !== text(name)) {
      status.textContent = text(name);
    }
    restart.hidden = !(name === "failed" || name === "ended");
    hangup.hidden = name === "ended";
  }

  var restart = document.getElementById("video-restart");
  var hangup = document.getElementById("video-hangup");
  if (
    typeof window.RTCPeerConnection !== "function" ||
    !navigator.mediaDevices ||
    typeof navigator.mediaDevices.getUserMedia !== "function"
  ) {
    return; // the page already says that video does not work here: use the chat
  }

  var me = panel.getAttribute("data-me");
  var remoteVideo = document.getElementById("video-remote");
  var localVideo = document.getElementById("video-local");
  var mediaNote = document.getElementById("video-media");
  var controls = panel.querySelector(".video-controls");
  var play = document.getElementById("video-play");
  var mute = document.getElementById("video-mute");
  var camera = document.getElementById("video-camera");

  var peerId = newId();
  var ice = null; // {servers, policy}
  var pc = null;
  var otherPeer = null; // the agent: the resident's page being called
  var local = null; // this side's MediaStream, or null
  var media = "none";
  var stopped = false; // this side stopped the video
  var pending = []; // candidates that came before their description
  var startedAt = 0;
  var gotIce;
  var iceReady = new Promise(function (resolve) {
    gotIce = resolve;
  });

  function newId() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    var out = "";
    for (var i = 0; i < bytes.length; i++) {
      out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    }
    return out;
  }

  function send(data) {
    chat.dispatchEvent(new CustomEvent("idc:send", { detail: { type: "signal", data: data } }));
  }

  function note(name) {
    mediaNote.textContent = text(name);
    mediaNote.hidden = !name;
  }

  // Camera and microphone; without a camera, the microphone only; without both, nothing (the
  // call still shows the other side, and the chat is there).
  say("starting");
  var mediaReady = navigator.mediaDevices
    .getUserMedia({ audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } } })
    .then(function (stream) {
      media = "video";
      return stream;
    })
    .catch(function () {
      return navigator.mediaDevices.getUserMedia({ audio: true }).then(function (stream) {
        media = "audio";
        note("audio_only");
        return stream;
      });
    })
    .catch(function () {
      media = "none";
      note("refused");
      panel.setAttribute("data-media", "none");
      return null;
    })
    .then(function (stream) {
      local = stream;
      panel.setAttribute("data-media", media);
      if (stream) {
        localVideo.srcObject = stream;
        controls.hidden = false;
        mute.hidden = false;
        camera.hidden = media !== "video";
      } else {
        controls.hidden = false;
        mute.hidden = true;
        camera.hidden = true;
      }
      say("waiting");
    });
  var ready = Promise.all([mediaReady, iceReady]);

  function hello() {
    if (!stopped) {
      send({ hello: { peer: peerId, media: media } });
    }
  }

  function closePeer() {
    if (pc) {
      pc.close();
      pc = null;
      panel.idcPeer = null;
    }
    remoteVideo.srcObject = null;
  }

  function fail() {
    say("failed");
  }

  function newPeer() {
    closePeer();
    var conn = new RTCPeerConnection({ iceServers: ice.servers, iceTransportPolicy: ice.policy });
    pc = conn;
    panel.idcPeer = conn; // for diagnostics (and the browser tests): getStats()
    startedAt = window.performance.now();
    conn.addEventListener("icecandidate", function (event) {
      if (pc === conn && event.candidate && event.candidate.candidate) {
        send({ candidate: event.candidate.toJSON() });
      }
    });
    conn.addEventListener("track", function (event) {
      if (pc !== conn) {
        return;
      }
      var stream = event.streams[0] || new MediaStream([event.track]);
      if (remoteVideo.srcObject !== stream) {
        remoteVideo.srcObject = stream;
        var playing = remoteVideo.play();
        if (playing && typeof playing.catch === "function") {
          playing.catch(function () {
            play.hidden = false; // the browser wants a click before sound plays
          });
        }
      }
    });
    conn.addEventListener("connectionstatechange", function () {
      if (pc !== conn) {
        return;
      }
      var state = conn.connectionState;
      if (state === "connected") {
        if (!panel.hasAttribute("data-setup-ms")) {
          panel.setAttribute("data-setup-ms", String(Math.round(window.performance.now() - startedAt)));
        }
        say("connected");
      } else if (state === "failed") {
        fail();
      } else if (state === "disconnected" || state === "connecting") {
        say("connecting");
      }
    });
    say("connecting");
    return conn;
  }

  function flush() {
    var queued = pending;
    pending = [];
    queued.forEach(addCandidate);
  }

  function addCandidate(candidate) {
    if (!pc || !pc.remoteDescription) {
      pending.push(candidate);
      return;
    }
    pc.addIceCandidate(candidate).catch(function () {
      // a candidate of an earlier connection: nothing to do
    });
  }

  // Set the offer or answer being made as this side's, and send it to the other side.
  function sendLocal(conn, made) {
    made
      .then(function (made_) {
        return conn.setLocalDescription(made_);
      })
      .then(function () {
        var mine = conn.localDescription;
        send({ description: { type: mine.type, sdp: mine.sdp } });
      })
      .catch(fail);
  }

  // The agent calls: send what there is, receive both kinds either way.
  function call() {
    pending = [];
    var conn = newPeer();
    ["audio", "video"].forEach(function (kind) {
      var track = local && local.getTracks().filter(function (t) {
        return t.kind === kind;
      })[0];
      if (track) {
        conn.addTrack(track, local);
      } else {
        conn.addTransceiver(kind, { direction: "recvonly" });
      }
    });
    sendLocal(conn, conn.createOffer());
  }

  // The resident answers an offer with a new connection.
  function answer(offer) {
    var conn = newPeer();
    var made = conn.setRemoteDescription(offer).then(function () {
      if (local) {
        local.getTracks().forEach(function (track) {
          conn.addTrack(track, local);
        });
      }
      flush();
      return conn.createAnswer();
    });
    sendLocal(conn, made);
  }

  function otherMedia(kind) {
    if (kind === "none") {
      note(media === "none" ? "refused" : "other_none");
    } else if (kind === "audio") {
      note(media === "audio" ? "audio_only" : "other_audio");
    } else if (media === "video") {
      note("");
    }
  }

  function onSignal(data) {
    if (data.hello) {
      otherMedia(data.hello.media);
      if (stopped) {
        return;
      }
      if (me === "agent") {
        var live = pc && pc.connectionState !== "failed" && pc.connectionState !== "closed";
        if (data.hello.peer !== otherPeer || !live) {
          otherPeer = data.hello.peer;
          ready.then(call);
        }
      } else {
        ready.then(hello);
      }
    } else if (data.description) {
      if (me === "resident" && data.description.type === "offer" && !stopped) {
        closePeer();
        pending = [];
        ready.then(function () {
          answer(data.description);
        });
      } else if (me === "agent" && data.description.type === "answer" && pc) {
        var conn = pc;
        conn
          .setRemoteDescription(data.description)
          .then(function () {
            if (pc === conn) {
              flush();
            }
          })
          .catch(fail);
      }
    } else if (data.candidate) {
      addCandidate(data.candidate);
    } else if (data.bye) {
      closePeer();
      otherPeer = null;
      say("ended");
    }
  }

  chat.addEventListener("idc:frame", function (event) {
    var frame = event.detail;
    if (frame.type === "ice") {
      ice = { servers: frame.servers, policy: frame.policy };
      panel.setAttribute("data-ice", frame.policy); // shown in a failed test's log
      gotIce();
    } else if (frame.type === "signal" && frame.data) {
      onSignal(frame.data);
    }
  });
  chat.addEventListener("idc:open", function () {
    ready.then(hello); // (again) after every (re)connect: the other side may have missed it
  });
  chat.dispatchEvent(new CustomEvent("idc:listen")); // and the frames that came before this

  play.addEventListener("click", function () {
    remoteVideo.play().then(function () {
      play.hidden = true;
    });
  });
  // Mute and camera off: a pressed button turns its kind of track off (and says how to undo).
  function toggle(button, kind, offName, onName) {
    button.addEventListener("click", function () {
      var off = button.getAttribute("aria-pressed") !== "true";
      (local ? local.getTracks() : []).forEach(function (track) {
        if (track.kind === kind) {
          track.enabled = !off;
        }
      });
      button.setAttribute("aria-pressed", String(off));
      button.textContent = text(off ? onName : offName);
    });
  }
  toggle(mute, "audio", "mute", "unmute");
  toggle(camera, "video", "camera_off", "camera_on");
  hangup.addEventListener("click", function () {
    stopped = true;
    send({ bye: true });
    closePeer();
    otherPeer = null;
    say("ended");
  });
  restart.addEventListener("click", function () {
    stopped = false;
    peerId = newId(); // a new call: the agent's page calls this one afresh
    closePeer();
    say("waiting");
    ready.then(hello);
  });
})();
