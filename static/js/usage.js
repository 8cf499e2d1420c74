// The Usage page: a live countdown to the reset and times shown in the visitor's own zone.
// The page is complete without this file (the server renders Beijing and UTC times).
(function () {
  "use strict";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function localise(root) {
    root.querySelectorAll("time[data-local-time]:not([data-localised])").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      var local = when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" + pad(when.getDate()) +
        " " + pad(when.getHours()) + ":" + pad(when.getMinutes());
      var prefix = el.getAttribute("data-local-prefix");
      if (prefix) {
        // Keep the Beijing time and add the visitor's: "00:00 Beijing time (your time: ...)".
        el.textContent = el.textContent + " (" + prefix + " " + local + ")";
      } else {
        el.textContent = local + ":" + pad(when.getSeconds());
        el.title = el.getAttribute("datetime");
      }
      el.setAttribute("data-localised", "");
    });
  }

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var left = Math.max(0, Math.round(Number(el.getAttribute("data-countdown")) - now));
      el.textContent = pad(Math.floor(left / 3600)) + ":" + pad(Math.floor(left % 3600 / 60)) + ":" + pad(left % 60);
    });
  }

  localise(document);
  tick();
  setInterval(tick, 1000);
  // htmx swaps in a fresh "today" panel every few seconds: localise what it brought.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    localise(event.detail.target.isConnected ? event.detail.target : document);
    tick();
  });
})();
