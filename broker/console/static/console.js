// The console's only script: the live events page (server-sent events).
// Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var next = document.getElementById("next");
  if (next) {
    window.location.replace(next.dataset.next || "/");
    return;
  }
  var table = document.getElementById("events");
  if (!table) {
    return;
  }
  var state = document.getElementById("events-state");
  var body = table.querySelector("tbody");
  var src = new EventSource("/events/stream");
  src.onopen = function () { state.textContent = "Live."; };
  src.onerror = function () { state.textContent = "Disconnected; reconnecting…"; };
  src.addEventListener("atf", function (m) {
    var ev = JSON.parse(m.data);
    var tr = document.createElement("tr");
    [ev.time, ev.kind, ev.agent, ev.role, ev.summary].forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = v || "";
      tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
  });
});
