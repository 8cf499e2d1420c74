// Small progressive enhancements; every page works without this file.

// What the page scripts share (portal.js loads first on every page, playground.js after it):
// the CSRF token, the owner-only key reveal, and copying text to the clipboard.
window.Portal = (function () {
  "use strict";
  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; } catch (e) { return ""; }
  }
  // POSTs to a key's reveal URL (API Keys page endpoint): its secret, never rendered into HTML.
  function fetchSecret(url) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": csrfToken() }
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (data) { return data.key; });
  }
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain-HTTP deployments have no Clipboard API: fall back to a selected, hidden textarea.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen-copy";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }
  return { csrfToken: csrfToken, fetchSecret: fetchSecret, copyText: copyText };
})();

(function () {
  "use strict";
  // The language switcher submits on change; the button stays for no-JS users.
  document.querySelectorAll(".language-switcher select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
  // Copy buttons: <button data-copy-target="#id"> copies that element's text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var target = document.querySelector(button.getAttribute("data-copy-target"));
    if (!target || !navigator.clipboard) return;
    navigator.clipboard.writeText(target.getAttribute("data-copy-value") || target.textContent.trim()).then(function () {
      var label = button.textContent;
      button.textContent = button.getAttribute("data-copied-label") || "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });
  // Docs: "Use my key" asks the API Keys reveal endpoint for the secret and writes it into
  // every example (.api-key-slot). The secret lives only in this page; the server never
  // renders it into the docs HTML.
  document.querySelectorAll(".code-copy[hidden]").forEach(function (button) { button.hidden = false; });
  document.querySelectorAll("[data-key-fill]").forEach(function (form) {
    form.hidden = false;
    var button = form.querySelector("[data-key-fill-button]");
    var select = form.querySelector("[data-key-select]");
    var status = form.querySelector("[data-key-fill-status]");
    var slots = document.querySelectorAll(".api-key-slot");
    var placeholder = slots.length ? slots[0].textContent : "YOUR_API_KEY";
    var label = button.textContent;
    var filled = false;
    function show(text, isFilled) {
      slots.forEach(function (slot) { slot.textContent = text; slot.classList.toggle("is-filled", isFilled); });
    }
    function fill() {
      button.disabled = true;
      status.textContent = "";
      Portal.fetchSecret(select.value).then(function (secret) {
        show(secret, true);
        filled = true;
        button.textContent = button.getAttribute("data-label-undo");
      }).catch(function () {
        status.textContent = button.getAttribute("data-label-error");
      }).then(function () { button.disabled = false; });
    }
    button.addEventListener("click", function () {
      if (!filled) { fill(); return; }
      show(placeholder, false);
      filled = false;
      button.textContent = label;
    });
    select.addEventListener("change", function () { if (filled) fill(); });
  });
})();
// API Keys page: reveal in place and copy. Without JavaScript the reveal form posts to a page
// that shows the key, and the copy buttons stay hidden (there is nothing they could do).
(function () {
  "use strict";
  var fetchSecret = Portal.fetchSecret;
  var copyText = Portal.copyText;
  function flash(button, text) {
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = text;
    setTimeout(function () { button.textContent = label; }, 1600);
  }
  document.querySelectorAll("[data-key-reveal]").forEach(function (form) {
    var row = form.closest("tr");
    var target = row && row.querySelector("[data-key-secret]");
    var button = form.querySelector("button");
    if (!target || !button) return;
    var showLabel = button.textContent;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (target.hasAttribute("data-revealed")) {
        target.textContent = target.getAttribute("data-masked");
        target.removeAttribute("data-revealed");
        button.textContent = showLabel;
        return;
      }
      button.disabled = true;
      fetchSecret(form.action).then(function (secret) {
        target.textContent = secret;
        target.setAttribute("data-revealed", "");
        button.textContent = form.getAttribute("data-hide-label") || showLabel;
      }).catch(function () { form.submit(); })  // the no-JS page still works
        .then(function () { button.disabled = false; });
    });
  });
  // Times are rendered in UTC; show them in the visitor's own time zone instead.
  document.querySelectorAll("time[data-key-local-time]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when)) return;
    function pad(n) { return (n < 10 ? "0" : "") + n; }
    el.title = el.textContent;
    el.textContent = when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" + pad(when.getDate()) +
      " " + pad(when.getHours()) + ":" + pad(when.getMinutes());
  });
  document.querySelectorAll("[data-key-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var target = document.querySelector(button.getAttribute("data-key-copy"));
      if (!target) return;
      var url = button.getAttribute("data-reveal-url");
      var known = !url || target.hasAttribute("data-revealed");
      var secret = known ? Promise.resolve(target.textContent.trim()) : fetchSecret(url);
      secret.then(copyText).then(function () {
        flash(button, button.getAttribute("data-copied-label") || "Copied");
      }).catch(function () {
        flash(button, button.getAttribute("data-failed-label") || "Copy failed");
      });
    });
  });
})();
