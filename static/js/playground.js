// The Playground: calls the model API on this origin, exactly as a program would.
//
// The key's secret comes from the API Keys reveal endpoint (POST + CSRF token, owner only) and
// lives only in this script's memory: never in the page's HTML, never in storage. Requests go
// to /openai/v1/chat/completions or /anthropic/v1/messages with `X-Playground: 1` so that the
// platform can tell them apart; the answer is streamed into the page as it arrives, and after
// it the key's latest Playground usage record is read back from the server (the Usage page's numbers).
// The conversation is kept in this tab only; "New chat" forgets it.
(function () {
  "use strict";
  var root = document.querySelector("[data-playground]");
  if (!root) return;
  root.hidden = false;

  var ANTHROPIC_VERSION = "2023-06-01";
  var form = root.querySelector("[data-playground-form]");
  var keySelect = root.querySelector("[data-pg-key]");
  var modelSelect = root.querySelector("[data-pg-model]");
  var maxTokensInput = root.querySelector("[data-pg-max-tokens]");
  var temperatureInput = root.querySelector("[data-pg-temperature]");
  var systemInput = root.querySelector("[data-pg-system]");
  var messageInput = root.querySelector("[data-pg-message]");
  var log = root.querySelector("[data-pg-log]");
  var statusLine = root.querySelector("[data-pg-status]");
  var errorBox = root.querySelector("[data-pg-error]");
  var sendButton = root.querySelector("[data-pg-send]");
  var stopButton = root.querySelector("[data-pg-stop]");
  var newButton = root.querySelector("[data-pg-new]");
  var codeSection = root.querySelector("[data-pg-code]");
  var snippetEl = root.querySelector("[data-pg-snippet]");
  var copyStatus = root.querySelector("[data-pg-copy-status]");
  var showKeyButton = root.querySelector("[data-pg-show-key]");
  var usageNote = root.querySelector("[data-pg-usage-note]");

  var conversation = [];   // [{role: "user"|"assistant", content: "..."}]
  var secrets = {};        // key public id -> secret, for this page's life only
  var controller = null;   // the AbortController of the request in flight
  var lastSent = null;     // what the snippets describe
  var snippetView = "curl";
  var snippetShowsKey = false;
  var chat = 0;            // bumped by "New chat": a late answer must not land in the new one

  function msg(name) { return root.getAttribute("data-msg-" + name) || ""; }
  function selectedKey() { return keySelect.options[keySelect.selectedIndex]; }
  function format() {
    var checked = root.querySelector("[data-pg-format]:checked");
    return checked ? checked.value : "openai";
  }
  function number(value) { return Number(value).toLocaleString("en-US"); }
  function ms(value) { return msg("ms").replace("{n}", number(value)); }

  // --- the key --------------------------------------------------------------------------
  function revealSecret(option) {
    var id = option.value;
    if (secrets[id]) return Promise.resolve(secrets[id]);
    return Portal.fetchSecret(option.getAttribute("data-reveal-url")).then(function (secret) {
      secrets[id] = secret;
      return secret;
    });
  }

  // --- usage read-back ------------------------------------------------------------------
  function fetchUsage(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("usage");
        return response.json();
      });
  }
  function setStat(name, text) {
    var el = root.querySelector('[data-pg-stat="' + name + '"]');
    if (el) el.textContent = text;
  }
  function showUsage(data, record) {
    setStat("remaining_tokens", number(data.today.remaining_tokens));
    if (!record) return;
    setStat("input_tokens", number(record.input_tokens));
    setStat("output_tokens", number(record.output_tokens));
    setStat("latency_ms", ms(record.latency_ms));
    setStat("first_token_ms", record.first_token_ms === null ? "–" : ms(record.first_token_ms));
    setStat("status_code", String(record.status_code) + (record.error_code ? " " + record.error_code : ""));
    root.setAttribute("data-pg-record", record.id);
  }
  function clearStats() {
    ["input_tokens", "output_tokens", "latency_ms", "first_token_ms", "status_code"].forEach(function (name) {
      setStat(name, "–");
    });
  }
  // The gateway writes records in small batches (a fraction of a second): wait for the one
  // newer than `before`, a few seconds at most.
  function readBack(url, before, attempts) {
    usageNote.textContent = msg("usage-pending");
    var tries = 0;
    return new Promise(function (resolve) {
      function poll() {
        tries += 1;
        fetchUsage(url).then(function (data) {
          var record = data.record && data.record.id !== before ? data.record : null;
          if (record || tries >= attempts) {
            showUsage(data, record);
            usageNote.textContent = record ? "" : msg("usage-missing");
            root.setAttribute("data-pg-usage", record ? "record" : "none");
            resolve(record);
          } else {
            setTimeout(poll, 250);
          }
        }).catch(function () {
          if (tries >= attempts) { resolve(null); } else { setTimeout(poll, 250); }
        });
      }
      poll();
    });
  }

  // --- the conversation -----------------------------------------------------------------
  function addTurn(role, text) {
    var item = document.createElement("li");
    item.className = "playground-turn playground-turn-" + role;
    var who = document.createElement("span");
    who.className = "playground-who";
    who.textContent = msg(role === "user" ? "you" : "assistant");
    var body = document.createElement("div");
    body.className = "playground-text";
    body.textContent = text;
    item.appendChild(who);
    item.appendChild(body);
    log.appendChild(item);
    return body;
  }
  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    root.setAttribute("data-pg-state", busy ? "streaming" : "idle");
    log.setAttribute("aria-busy", busy ? "true" : "false");
  }
  function clearError() {
    errorBox.hidden = true;
    errorBox.querySelector("[data-pg-error-text]").textContent = "";
    errorBox.querySelector("[data-pg-error-next]").textContent = "";
  }

  // --- errors: the gateway's own message, in either dialect, and what to do next ---------
  function errorFrom(payload, status, headers) {
    var error = payload && typeof payload === "object" ? payload.error : null;
    var message = error && typeof error === "object" ? error.message : (typeof error === "string" ? error : "");
    var code = error && typeof error === "object" ? (error.code || "") : "";
    var type = error && typeof error === "object" ? (error.type || "") : "";
    if (!code) {
      // Anthropic's envelope has no code: tell the cases apart by status (and x-should-retry).
      if (status === 403) code = "api_key_disabled";
      else if (status === 401) code = "invalid_api_key";
      else if (status === 429) {
        code = headers && headers.get("x-should-retry") === "false" ? "insufficient_quota" : "rate_limit_exceeded";
      } else if (status >= 500 || type === "overloaded_error" || type === "api_error") code = "upstream_error";
    }
    return { status: status, code: code, message: message || msg("unknown") };
  }
  function showError(error) {
    errorBox.hidden = false;
    errorBox.setAttribute("data-pg-error-code", error.code || "");
    errorBox.querySelector("[data-pg-error-text]").textContent = error.message;
    var next = errorBox.querySelector("[data-pg-error-next]");
    next.textContent = "";
    var text, link, href;
    var code = error.code || "";
    if (code === "insufficient_quota") {
      text = msg("next-quota"); link = msg("next-quota-link"); href = root.getAttribute("data-usage-url") + "#quota";
    } else if (code === "rate_limit_exceeded" || code === "too_many_auth_failures") {
      text = msg("next-rate");
    } else if (/api_key|account_disabled/.test(code) || error.status === 401 || error.status === 403) {
      text = msg("next-key"); link = msg("next-key-link"); href = root.getAttribute("data-keys-url");
    } else if (/upstream|service_unavailable|server_busy|stream_time_limit/.test(code) || error.status >= 500) {
      text = msg("next-upstream");
    } else if (error.status >= 400) {
      text = msg("next-request");
    }
    if (text) next.appendChild(document.createTextNode(text + " "));
    if (link) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = link;
      next.appendChild(a);
    }
  }

  // --- the request ------------------------------------------------------------------------
  function buildRequest() {
    var fmt = format();
    var maxTokens = Math.max(1, parseInt(maxTokensInput.value, 10) || 1);
    var temperature = parseFloat(temperatureInput.value);
    if (isNaN(temperature)) temperature = 0.7;
    temperature = Math.max(0, Math.min(fmt === "anthropic" ? 1 : 2, temperature));
    return {
      format: fmt,
      model: modelSelect.value,
      system: systemInput.value.trim(),
      messages: conversation.map(function (m) { return { role: m.role, content: m.content }; }),
      maxTokens: maxTokens,
      temperature: temperature,
      keyMasked: selectedKey().getAttribute("data-masked"),
      keyId: selectedKey().value
    };
  }
  function openaiBody(req) {
    var messages = req.system ? [{ role: "system", content: req.system }].concat(req.messages) : req.messages;
    return {
      model: req.model,
      messages: messages,
      max_tokens: req.maxTokens,
      temperature: req.temperature,
      stream: true,
      stream_options: { include_usage: true }
    };
  }
  function anthropicBody(req) {
    var body = { model: req.model, max_tokens: req.maxTokens, temperature: Math.min(1, req.temperature) };
    if (req.system) body.system = req.system;
    body.messages = req.messages;
    body.stream = true;
    return body;
  }
  function endpoint(fmt) {
    return fmt === "anthropic" ? "/anthropic/v1/messages" : "/openai/v1/chat/completions";
  }
  function authHeaders(fmt, secret) {
    if (fmt === "anthropic") return { "x-api-key": secret, "anthropic-version": ANTHROPIC_VERSION };
    return { "Authorization": "Bearer " + secret };
  }

  // Server-sent events, in either dialect: yields {event, data} as blocks complete.
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function handle(block) {
      var event = "", data = [];
      block.split(/\r?\n/).forEach(function (line) {
        if (line.indexOf("event:") === 0) event = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (data.length) onEvent(event, data.join("\n"));
    }
    function pump() {
      return reader.read().then(function (result) {
        if (result.done) {
          if (buffer.trim()) handle(buffer);
          return;
        }
        buffer += decoder.decode(result.value, { stream: true });
        var parts = buffer.split(/\r?\n\r?\n/);
        buffer = parts.pop();
        parts.forEach(handle);
        return pump();
      });
    }
    return pump();
  }

  function send() {
    var text = messageInput.value.trim();
    if (!text) {
      statusLine.textContent = msg("empty");
      messageInput.focus();
      return;
    }
    if (controller) return;
    clearError();
    var option = selectedKey();
    var usageUrl = option.getAttribute("data-usage-url");
    conversation.push({ role: "user", content: text });
    addTurn("user", text);
    messageInput.value = "";
    var req = buildRequest();
    var answerEl = addTurn("assistant", "");
    answerEl.setAttribute("data-pg-answer", "");
    var answer = "";
    var streamError = null;
    var stopped = false;
    controller = new AbortController();
    var current = controller;
    setBusy(true);
    statusLine.textContent = msg("streaming");
    clearStats();
    var before = null;
    var thisChat = chat;

    function append(piece) {
      if (!piece) return;
      answer += piece;
      answerEl.textContent = answer;
    }
    function onEvent(event, data) {
      if (data === "[DONE]") return;
      var parsed;
      try { parsed = JSON.parse(data); } catch (e) { return; }
      if (event === "error" || (parsed && parsed.type === "error") || (parsed && parsed.error)) {
        streamError = errorFrom(parsed, 0, null);
        return;
      }
      if (req.format === "anthropic") {
        if (parsed.type === "content_block_delta" && parsed.delta && parsed.delta.type === "text_delta") {
          append(parsed.delta.text);
        }
      } else if (parsed.choices && parsed.choices.length && parsed.choices[0].delta) {
        append(parsed.choices[0].delta.content || "");
      }
    }

    var body = req.format === "anthropic" ? anthropicBody(req) : openaiBody(req);
    lastSent = req;
    snippetShowsKey = false;
    renderSnippet();
    codeSection.hidden = false;

    Promise.all([
      revealSecret(option),
      fetchUsage(usageUrl).then(function (data) { before = data.record ? data.record.id : null; })
        .catch(function () { before = null; })
    ]).catch(function () {
      throw { code: "reveal", status: 0, message: msg("reveal-failed") };
    }).then(function (values) {
      var headers = authHeaders(req.format, values[0]);
      headers["Content-Type"] = "application/json";
      headers["Accept"] = "text/event-stream";
      headers["X-Playground"] = "1";
      return fetch(endpoint(req.format), {
        method: "POST",
        credentials: "omit",
        headers: headers,
        body: JSON.stringify(body),
        signal: current.signal
      }).catch(function (error) {
        if (error && error.name === "AbortError") throw error;
        throw { code: "network", status: 0, message: msg("network") };
      });
    }).then(function (response) {
      if (!response.ok) {
        return response.text().then(function (raw) {
          var payload = null;
          try { payload = JSON.parse(raw); } catch (e) { payload = null; }
          throw errorFrom(payload, response.status, response.headers);
        });
      }
      return readEvents(response, onEvent);
    }).then(function () {
      if (streamError) throw streamError;
      statusLine.textContent = msg("done");
      return "ok";
    }).catch(function (error) {
      if (error && error.name === "AbortError") {
        stopped = true;
        statusLine.textContent = msg("stopped");
        return "stopped";
      }
      if (!error || !error.message) error = { code: "", status: 0, message: msg("unknown") };
      statusLine.textContent = "";
      showError(error);
      return error.code === "reveal" || error.code === "network" ? "local" : "error";
    }).then(function (outcome) {
      if (thisChat !== chat) {
        // "New chat" was pressed meanwhile: this answer belongs to the old conversation.
      } else if (answer) {
        conversation.push({ role: "assistant", content: answer });
      } else {
        answerEl.parentNode.remove();
        // Nothing came back: take the message out again, and let the user resend it.
        conversation.pop();
        if (outcome !== "ok") messageInput.value = text;
      }
      if (stopped) answerEl.parentNode.classList.add("playground-turn-stopped");
      controller = null;
      setBusy(false);
      root.setAttribute("data-pg-outcome", outcome);
      if (outcome === "local") return null;
      // Successful and stopped requests always leave a record; refusals may not.
      return readBack(usageUrl, before, outcome === "error" ? 6 : 24);
    }).then(function () {
      root.setAttribute("data-pg-finished", String(Number(root.getAttribute("data-pg-finished") || 0) + 1));
      messageInput.focus();
    });
  }

  // --- code snippets ----------------------------------------------------------------------
  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }
  function pyString(text) { return JSON.stringify(text); }
  // Messages hold only strings, and JSON strings, lists and objects are Python literals too.
  function pyValue(value) { return JSON.stringify(value, null, 4); }
  function indent(text, spaces) {
    var pad = new Array(spaces + 1).join(" ");
    return text.split("\n").map(function (line, i) { return i ? pad + line : line; }).join("\n");
  }
  function snippet(kind, req, key) {
    var base = root.getAttribute("data-base-url");
    if (kind === "curl") {
      var body = req.format === "anthropic" ? anthropicBody(req) : openaiBody(req);
      var lines = ["curl -sS -N " + shellQuote(base + endpoint(req.format))];
      lines.push("-H " + shellQuote("Content-Type: application/json"));
      if (req.format === "anthropic") {
        lines.push("-H " + shellQuote("x-api-key: " + key));
        lines.push("-H " + shellQuote("anthropic-version: " + ANTHROPIC_VERSION));
      } else {
        lines.push("-H " + shellQuote("Authorization: Bearer " + key));
      }
      lines.push("-d " + shellQuote(JSON.stringify(body, null, 2)));
      return lines.join(" \\\n  ");
    }
    if (kind === "openai") {
      var ob = openaiBody(req);
      return [
        "from openai import OpenAI",
        "",
        "client = OpenAI(base_url=" + pyString(base + "/openai/v1") + ", api_key=" + pyString(key) + ")",
        "stream = client.chat.completions.create(",
        "    model=" + pyString(ob.model) + ",",
        "    messages=" + indent(pyValue(ob.messages), 4) + ",",
        "    max_tokens=" + ob.max_tokens + ",",
        "    temperature=" + ob.temperature + ",",
        "    stream=True,",
        "    stream_options={\"include_usage\": True},",
        ")",
        "for chunk in stream:",
        "    if chunk.choices and chunk.choices[0].delta.content:",
        "        print(chunk.choices[0].delta.content, end=\"\", flush=True)",
        "    if chunk.usage:",
        "        print(\"\\n\", chunk.usage)",
        ""
      ].join("\n");
    }
    var ab = anthropicBody(req);
    var args = [
      "    model=" + pyString(ab.model) + ",",
      "    max_tokens=" + ab.max_tokens + ",",
      "    temperature=" + ab.temperature + ","
    ];
    if (ab.system) args.push("    system=" + pyString(ab.system) + ",");
    args.push("    messages=" + indent(pyValue(ab.messages), 4) + ",");
    return [
      "import anthropic",
      "",
      "client = anthropic.Anthropic(base_url=" + pyString(base + "/anthropic") + ", api_key=" + pyString(key) + ")",
      "with client.messages.stream("
    ].concat(args, [
      ") as stream:",
      "    for text in stream.text_stream:",
      "        print(text, end=\"\", flush=True)",
      "    print(\"\\n\", stream.get_final_message().usage)",
      ""
    ]).join("\n");
  }
  function renderSnippet() {
    if (!lastSent) return;
    var key = snippetShowsKey && secrets[lastSent.keyId] ? secrets[lastSent.keyId] : lastSent.keyMasked;
    snippetEl.textContent = snippet(snippetView, lastSent, key);
    snippetEl.setAttribute("data-pg-kind", snippetView);
    root.querySelectorAll("[data-pg-view]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-pg-view") === snippetView ? "true" : "false");
    });
    showKeyButton.textContent = msg(snippetShowsKey ? "hide-key" : "show-key");
  }
  root.querySelectorAll("[data-pg-view]").forEach(function (button) {
    button.addEventListener("click", function () {
      snippetView = button.getAttribute("data-pg-view");
      renderSnippet();
    });
  });
  root.querySelectorAll("[data-pg-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      if (!lastSent) return;
      snippetView = button.getAttribute("data-pg-copy");
      renderSnippet();
      Portal.copyText(snippetEl.textContent).then(function () {
        copyStatus.textContent = msg("copied");
      }, function () {
        copyStatus.textContent = msg("copy-failed");
      });
    });
  });
  showKeyButton.addEventListener("click", function () {
    if (!lastSent) return;
    if (snippetShowsKey) { snippetShowsKey = false; renderSnippet(); return; }
    var option = keySelect.querySelector('option[value="' + lastSent.keyId + '"]');
    if (!option) return;
    showKeyButton.disabled = true;
    revealSecret(option).then(function () {
      snippetShowsKey = true;
      renderSnippet();
    }, function () {
      copyStatus.textContent = msg("reveal-failed");
    }).then(function () { showKeyButton.disabled = false; });
  });

  // --- wiring -----------------------------------------------------------------------------
  form.addEventListener("submit", function (event) { event.preventDefault(); send(); });
  messageInput.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.isComposing) return;
    if (event.ctrlKey || event.metaKey || !event.shiftKey) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", function () {
    if (controller) controller.abort();
  });
  newButton.addEventListener("click", function () {
    if (controller) controller.abort();
    chat += 1;
    conversation = [];
    log.textContent = "";
    clearError();
    statusLine.textContent = msg("new-chat");
    messageInput.focus();
  });
  function syncTemperatureLimit() {
    temperatureInput.max = format() === "anthropic" ? "1" : "2";
  }
  root.querySelectorAll("[data-pg-format]").forEach(function (radio) {
    radio.addEventListener("change", syncTemperatureLimit);
  });
  syncTemperatureLimit();
  setBusy(false);
})();
