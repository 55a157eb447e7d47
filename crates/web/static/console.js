// Rampart console: live device charts, claim status, camera scanning.
// Our own script, served from /static (the CSP allows no inline script).
(function () {
  "use strict";

  // Device page: follow the device's live events; on a reading, show it at
  // once and re-fetch the page's charts (server-rendered SVG from rollups)
  // at most every few seconds. Whenever the stream (re)opens the page's
  // state is re-fetched too: an event that happened after the server
  // rendered the page but before the stream was subscribed (a device cut
  // off while the page loaded) is otherwise never seen.
  var device = document.getElementById("device");
  if (device && window.EventSource) {
    var id = device.getAttribute("data-device");
    var latest = document.getElementById("latest");
    var pending = null;
    var refresh = function () {
      if (pending) clearTimeout(pending);
      pending = null;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (!text) return;
          var doc = new DOMParser().parseFromString(text, "text/html");
          ["charts", "presence", "last-seen", "presence-badge"].forEach(function (name) {
            var fresh = doc.getElementById(name);
            var old = document.getElementById(name);
            if (fresh && old) old.replaceWith(fresh);
          });
        })
        .catch(function () {});
    };
    var later = function () { if (!pending) pending = setTimeout(refresh, 3000); };
    var source = new EventSource("/api/v1/devices/" + encodeURIComponent(id) + "/events");
    source.addEventListener("reading", function (e) {
      try {
        var m = JSON.parse(e.data);
        var parts = Object.keys(m.metrics).sort().map(function (k) {
          return k + " " + (Math.round(m.metrics[k] * 100) / 100);
        });
        latest.textContent = parts.join(" · ") + " at " + new Date(m.ts_ms).toLocaleTimeString();
      } catch (err) { /* a malformed event changes nothing */ }
      later();
    });
    source.addEventListener("presence", function (e) {
      try {
        var m = JSON.parse(e.data);
        // Looked up each time: a refresh may have replaced the element.
        var badge = document.getElementById("presence-badge");
        badge.innerHTML = "";
        var span = document.createElement("span");
        span.className = m.online ? "badge on" : "badge";
        span.textContent = m.online ? "online" : "offline";
        badge.appendChild(span);
      } catch (err) { /* ignore */ }
      later();
    });
    source.addEventListener("lagged", later);
    source.onopen = refresh;
    source.onerror = function () { latest.textContent = "live updates paused (reconnecting…)"; };
  }

  // Claim page: poll the claim until it is bound or failed.
  var status = document.getElementById("claim-status");
  if (status && status.getAttribute("data-status") === "pending") {
    var claim = status.getAttribute("data-claim");
    var message = document.getElementById("claim-message");
    var poll = function () {
      fetch("/api/v1/claims/" + encodeURIComponent(claim), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (c) {
          if (c.status && c.status !== "pending") {
            window.location.replace("/claim?id=" + encodeURIComponent(claim));
          } else if (c.error) {
            message.textContent = c.error.message;
          } else {
            setTimeout(poll, 1500);
          }
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 1000);
  }

  // Header: the notifications badge. Rendered by the server on every
  // page; then pushed by the server over SSE, and re-read from the API
  // when the page comes back into view.
  var bellCount = document.getElementById("notify-badge");
  if (bellCount) {
    var bell = document.getElementById("notify-bell");
    var showUnread = function (n) {
      bellCount.setAttribute("data-unread", String(n));
      bellCount.textContent = n > 99 ? "99+" : String(n);
      bellCount.hidden = n === 0;
      var label = n === 0 ? "Notifications, none unread" : "Notifications, " + n + " unread";
      bell.setAttribute("title", label);
      bell.setAttribute("aria-label", label);
    };
    var recount = function () {
      if (document.visibilityState !== "visible") return;
      fetch("/api/v1/notifications?unread=true&limit=1", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (page) { if (page && typeof page.unread === "number") showUnread(page.unread); })
        .catch(function () {});
    };
    document.addEventListener("visibilitychange", recount);
    window.addEventListener("focus", recount);
    // The server pushes the count when a claim ends or notifications are
    // marked read elsewhere.
    if (window.EventSource) {
      var inbox = new EventSource("/api/v1/notifications/events");
      inbox.addEventListener("unread", function (e) {
        try {
          var m = JSON.parse(e.data);
          if (typeof m.unread === "number") showUnread(m.unread);
        } catch (err) { /* a malformed event changes nothing */ }
      });
    }
  }

  // Claim page: scan the label with the camera where the browser has
  // BarcodeDetector (Chrome on Android, ...); otherwise paste.
  var scanner = document.getElementById("scanner");
  if (scanner && "BarcodeDetector" in window && navigator.mediaDevices) {
    scanner.hidden = false;
    var start = document.getElementById("scan-start");
    var video = document.getElementById("scan-video");
    var hint = document.getElementById("scan-hint");
    var qr = document.getElementById("qr");
    start.addEventListener("click", function () {
      var detector = new window.BarcodeDetector({ formats: ["qr_code"] });
      navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } })
        .then(function (stream) {
          video.srcObject = stream;
          video.hidden = false;
          video.play();
          hint.textContent = "Point the camera at the label's QR code.";
          var stop = function () { stream.getTracks().forEach(function (t) { t.stop(); }); video.hidden = true; };
          var look = function () {
            detector.detect(video).then(function (codes) {
              if (codes.length > 0) {
                stop();
                qr.value = codes[0].rawValue;
                hint.textContent = "Label read.";
                document.getElementById("claim-form").submit();
              } else {
                requestAnimationFrame(look);
              }
            }).catch(function () { requestAnimationFrame(look); });
          };
          look();
        })
        .catch(function (err) { hint.textContent = "The camera is not available (" + err.name + "): paste the label instead."; });
    });
  }

  // Firmware page: send the chosen bundle to the API as the request body
  // (a bundle is too large for a form the CSRF check reads), then reload.
  var upload = document.getElementById("firmware-upload");
  if (upload && window.fetch) {
    upload.addEventListener("submit", function (e) {
      e.preventDefault();
      var file = document.getElementById("bundle").files[0];
      var out = document.getElementById("upload-status");
      if (!file) return;
      out.textContent = "Uploading " + file.name + "…";
      fetch("/api/v1/firmware", {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/octet-stream",
          "X-CSRF-Token": upload.getAttribute("data-csrf")
        },
        body: file
      })
        .then(function (r) { return r.json().then(function (b) { return { ok: r.ok, body: b }; }); })
        .then(function (r) {
          if (r.ok) {
            out.textContent = "Uploaded " + r.body.version + " for " + r.body.deviceType + " (id " + r.body.id + ").";
            window.location.reload();
          } else {
            out.textContent = "Refused (" + r.body.error.code + "): " + r.body.error.message;
          }
        })
        .catch(function (err) { out.textContent = "The upload failed: " + err; });
    });
  }
})();
