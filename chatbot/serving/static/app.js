// The web chat page of `chatbot serve`: plain JavaScript over the native REST API (/api/...).
// Server text (replies, names, errors) only ever goes into the page through textContent.
"use strict";

(function () {
  const KEY_STORAGE = "chatbot.apiKey";
  const PAGE = 50;

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), forgetKey: $("forget-key"),
    error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
    newSession: $("new-session"), newSessionName: $("new-session-name"),
    sessions: $("sessions"), noSessions: $("no-sessions"),
    title: $("session-title"), conversation: $("conversation"), log: $("log"), loadOlder: $("load-older"),
    composer: $("composer"), message: $("message"), send: $("send"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyReason: $("key-reason"),
    keyRemember: $("key-remember"),
    correctionTemplate: $("correction-template"),
    toggleSessions: $("toggle-sessions"), layout: document.querySelector(".layout"),
  };
  const narrow = window.matchMedia("(max-width: 700px)");

  const state = {
    key: readKey(),
    auth: false,
    sessions: [],
    sessionsLoaded: false,
    current: null,      // the shown session's id, null before the first message of a new one
    nextBefore: null,   // the id to page older messages from, null when there are none
    busy: false,
    keyWait: null,      // the promise of a key being asked for
  };

  // --- errors ---------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function showError(error) {
    let text = error && error.message ? error.message : String(error);
    if (error instanceof TypeError) text = "Cannot reach the server (" + text + ")";
    el.errorText.textContent = text;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.errorText.textContent = "";
  }

  // --- the API key ----------------------------------------------------------------------------
  // The key is kept for this tab (sessionStorage: reloads keep it, closing the tab forgets it),
  // or in this browser until "Forget key" (localStorage) when the user ticks "Remember".
  function readKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) { return ""; }
  }

  function storeKey(key, remember) {
    state.key = key;
    try {
      localStorage.removeItem(KEY_STORAGE);
      sessionStorage.removeItem(KEY_STORAGE);
      if (key) (remember ? localStorage : sessionStorage).setItem(KEY_STORAGE, key);
    } catch (e) { /* storage refused (private mode): the key lasts as long as the page */ }
    el.forgetKey.hidden = !key;
  }

  // Asks for the key once, however many requests were refused meanwhile.
  function askForKey(reason) {
    if (!state.keyWait) {
      state.keyWait = new Promise((resolve, reject) => {
        el.keyReason.textContent = reason;
        el.keyInput.value = "";
        let given = "";
        const done = (event) => {
          event.preventDefault();
          given = el.keyInput.value.trim();
          if (given) el.keyDialog.close();
        };
        const keep = (event) => event.preventDefault(); // Escape: keep it open where the browser lets us
        // Closed with a key, or by Escape (a browser lets a page block only the first one, or none
        // before the user has clicked): either way the wait ends, or every request after it hung.
        const closed = () => {
          el.keyForm.removeEventListener("submit", done);
          el.keyDialog.removeEventListener("cancel", keep);
          el.keyDialog.removeEventListener("close", closed);
          state.keyWait = null;
          if (given) {
            storeKey(given, el.keyRemember.checked);
            resolve(given);
          } else {
            reject(new ApiError(401, "This server needs an API key: send again to enter it.", "missing_key"));
          }
          el.message.focus();
        };
        el.keyForm.addEventListener("submit", done);
        el.keyDialog.addEventListener("cancel", keep);
        el.keyDialog.addEventListener("close", closed);
        if (!el.keyDialog.open) el.keyDialog.showModal();
        el.keyInput.focus();
      });
    }
    return state.keyWait;
  }

  // --- HTTP -----------------------------------------------------------------------------------
  function headers(extra) {
    const out = Object.assign({ "Accept": "application/json" }, extra || {});
    if (state.key) out["Authorization"] = "Bearer " + state.key;
    return out;
  }

  async function errorOf(response) {
    let message = "HTTP " + response.status + " " + response.statusText;
    let code = "";
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        message = body.error.message;
        code = body.error.code || "";
      }
    } catch (e) { /* not JSON: the status line says it */ }
    if (response.status === 413) message = "This message is too long for the server: " + message;
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      if (wait) message += " (retry in " + wait + " s)";
    }
    const id = response.headers.get("X-Request-ID");  // what the server's log line names
    if (id && response.status >= 500) message += " (request " + id + ")";
    return new ApiError(response.status, message, code);
  }

  // A fetch of the API (a path relative to the page, so that a mounted app works too) with the
  // key; a 401 asks for the key and tries again. Resolves to the Response when it is a success.
  async function request(path, options) {
    options = options || {};
    for (let attempt = 0; ; attempt++) {
      const init = {
        method: options.method || "GET",
        headers: headers(options.body !== undefined ? { "Content-Type": "application/json" } : null),
      };
      if (options.body !== undefined) init.body = JSON.stringify(options.body);
      if (options.accept) init.headers["Accept"] = options.accept;
      const response = await fetch(path, init);
      if (response.status === 401 && attempt < 5) {
        const refused = !!state.key;
        storeKey("");
        await askForKey(refused ? "That key was refused: enter a valid API key." : "This server needs an API key.");
        continue;
      }
      if (!response.ok) throw await errorOf(response);
      return response;
    }
  }

  async function api(path, options) {
    const response = await request(path, options);
    return response.status === 204 ? null : response.json();
  }

  // Reads a text/event-stream body: calls onEvent(name, data) per frame (a frame ends with a
  // blank line; `data:` lines join with newlines, as EventSource does).
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const dispatch = (frame) => {
      let name = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) onEvent(name, data.join("\n"));
    };
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
      if (done) break;
    }
    if (buffer.trim()) dispatch(buffer);
  }

  // --- rendering ------------------------------------------------------------------------------
  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }

  // Icons as inline SVG (drawn for this page): they show without an emoji font.
  const ICONS = {
    good: ["M3 10h3v11H3z", "M8 10l4-7c1.5 0 2.6 1.1 2.2 2.7L13.5 9h6c1.4 0 2.3 1.3 1.9 2.6l-2.1 7.7A2.4 2.4 0 0 1 17 21H8z"],
    trash: ["M4 7h16", "M9 7V4h6v3", "M6 7l1 13h10l1-13", "M10 11v6", "M14 11v6"],
  };

  function icon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.classList.add("icon");
    const group = document.createElementNS("http://www.w3.org/2000/svg", "g");
    if (name === "bad") group.setAttribute("transform", "matrix(1 0 0 -1 0 24)"); // thumb down
    for (const d of ICONS[name === "bad" ? "good" : name]) {
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", d);
      group.append(path);
    }
    svg.append(group);
    return svg;
  }

  function sessionLabel(session) {
    return session.name ? session.name : "#" + session.id;
  }

  function renderSessions() {
    el.sessions.replaceChildren();
    el.noSessions.hidden = !state.sessionsLoaded || state.sessions.length > 0;
    for (const session of state.sessions) {
      const item = node("li", "session");
      item.dataset.sessionId = session.id;
      const open = node("button", "open");
      open.type = "button";
      const name = node("span", "name", sessionLabel(session));
      name.dir = "auto";
      open.append(name,
                  node("span", "count", session.message_count + (session.message_count === 1 ? " message" : " messages")));
      if (session.id === state.current) {
        item.classList.add("current");
        open.setAttribute("aria-current", "true");
      }
      open.addEventListener("click", () => run(() => openSession(session.id)));
      const remove = node("button", "delete link");
      remove.append(icon("trash"));
      remove.type = "button";
      remove.title = "Delete this session";
      remove.setAttribute("aria-label", "Delete session " + sessionLabel(session));
      remove.addEventListener("click", () => run(() => deleteSession(session)));
      item.append(open, remove);
      el.sessions.append(item);
    }
  }

  function showTitle() {
    const session = state.sessions.find((s) => s.id === state.current);
    el.title.textContent = session ? sessionLabel(session) : "New conversation";
  }

  function percent(value) {
    return Math.round(Math.max(0, Math.min(1, value)) * 100) + "%";
  }

  // A message's text: fenced code blocks (``` lines) as <pre><code>, kept as typed, monospace,
  // scrolled sideways rather than wrapped; the rest as plain text. Text nodes only, never markup;
  // dir="auto" lays out right-to-left text (Arabic, Hebrew) as such.
  function messageText(text) {
    const box = node("div", "text");
    box.dir = "auto";
    fillText(box, text);
    return box;
  }

  function fillText(box, text) {
    const parts = [];
    let plain = [];
    let code = null; // the lines of an open code block
    const addPlain = () => {
      const joined = plain.join("\n").replace(/^\n+|\n+$/g, "");
      if (joined) parts.push(document.createTextNode(joined));
      plain = [];
    };
    const addCode = () => {
      const pre = node("pre");
      pre.dir = "ltr";
      pre.append(node("code", null, code.join("\n")));
      parts.push(pre);
      code = null;
    };
    for (const line of text.split("\n")) {
      if (/^\s*```/.test(line)) {
        if (code === null) { addPlain(); code = []; } else addCode();
      } else (code === null ? plain : code).push(line);
    }
    if (code !== null) addCode(); // not closed (yet, while a reply streams)
    addPlain();
    box.replaceChildren(...parts);
  }

  function userBubble(message) {
    const item = node("li", "message user");
    item.dataset.role = "user";
    if (message.id) item.dataset.messageId = message.id;
    item.append(node("span", "visually-hidden", "You: "), messageText(message.text));
    return item;
  }

  function botBubble(message) {
    const item = node("li", "message bot");
    item.dataset.role = "bot";
    item.append(node("span", "visually-hidden", "Bot: "), messageText(message ? message.text : ""));
    if (message) finishBot(item, message);
    return item;
  }

  // A bot reply's details and actions, once it is stored (it has an id).
  function finishBot(item, message) {
    item.dataset.messageId = message.id;
    item.classList.remove("pending");
    item.removeAttribute("aria-busy");
    fillText(item.querySelector(".text"), message.text);
    const meta = node("div", "meta");
    if (message.fallback) {
      item.classList.add("fallback");
      const badge = node("span", "badge", "fallback");
      badge.title = "The model was not confident: this is the fallback answer";
      meta.append(badge);
    }
    if (typeof message.confidence === "number") {
      const confidence = node("span", "confidence", "confidence " + percent(message.confidence));
      const details = ["score " + (typeof message.score === "number" ? message.score.toFixed(3) : "?")];
      if (typeof message.latency_ms === "number") details.push(Math.round(message.latency_ms) + " ms");
      confidence.title = details.join(", ");
      meta.append(confidence);
    }
    const actions = node("span", "actions");
    // Named after their reply: a screen reader's list of buttons held ten "Good reply"s.
    const which = ": " + shortened(message.text);
    const good = feedbackButton(item, "good", "Good reply", which);
    const bad = feedbackButton(item, "bad", "Bad reply", which);
    const correct = node("button", "correct link", "correct");
    correct.type = "button";
    correct.setAttribute("aria-label", "Correct this reply" + which);
    correct.addEventListener("click", () => openCorrection(item));
    actions.append(good, bad, correct);
    meta.append(actions);
    item.append(meta);
    const feedback = message.feedback;  // stored earlier (history pages carry it)
    if (feedback) {
      for (const b of [good, bad]) b.setAttribute("aria-pressed", String(b.dataset.rating === feedback.rating));
      if (feedback.correction) meta.append(node("span", "corrected", "correction saved"));
    }
  }

  function shortened(text) { // the first words of a reply, to name its buttons
    const words = text.split(/\s+/).filter(Boolean);
    return words.slice(0, 6).join(" ") + (words.length > 6 ? "…" : "");
  }

  function feedbackButton(item, rating, label, which) {
    const button = node("button", "rate " + rating);
    button.append(icon(rating));
    button.type = "button";
    button.dataset.rating = rating;
    button.setAttribute("aria-label", label + which);
    button.setAttribute("aria-pressed", "false");
    button.title = label + (rating === "good" ? " (👍)" : " (👎)"); // for the mouse; the name above is read
    button.addEventListener("click", () => run(async () => {
      const saved = await api("api/messages/" + item.dataset.messageId + "/feedback",
                              { method: "POST", body: { rating } });
      for (const b of item.querySelectorAll("button.rate")) {
        b.setAttribute("aria-pressed", String(b.dataset.rating === saved.rating));
      }
    }));
    return button;
  }

  function openCorrection(item) {
    const existing = item.querySelector("form.correction");
    if (existing) { existing.querySelector("textarea").focus(); return; }
    const form = el.correctionTemplate.content.firstElementChild.cloneNode(true);
    const box = form.querySelector("textarea");
    box.dir = "auto";
    const close = () => { // focus back where the form was opened, not to the top of the page
      form.remove();
      const opener = item.querySelector("button.correct");
      if (opener) opener.focus();
    };
    form.querySelector(".cancel").addEventListener("click", close);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = box.value.trim();
      if (!text) return;
      run(async () => {
        await api("api/messages/" + item.dataset.messageId + "/feedback",
                  { method: "POST", body: { correction: text } });
        close();
        item.querySelector(".meta").append(node("span", "corrected", "correction saved"));
      });
    });
    box.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
    item.append(form);
    box.focus();
  }

  function renderMessage(message) {
    return message.role === "bot" ? botBubble(message) : userBubble(message);
  }

  function scrollToEnd() {
    el.conversation.scrollTop = el.conversation.scrollHeight;
  }

  // --- actions --------------------------------------------------------------------------------
  // Runs an action: clears the last error, shows the new one; never fails silently.
  async function run(action) {
    clearError();
    try {
      await action();
    } catch (error) {
      showError(error);
    }
  }

  async function loadSessions() {
    const body = await api("api/sessions");
    state.sessions = body.sessions;
    state.sessionsLoaded = true;
    renderSessions();
    showTitle();
  }

  // The open session is in the address (#session=ID): a reload comes back to it, Back goes to
  // the one before, and a link opens it.
  function sessionInAddress() {
    const found = /^#session=(\d+)$/.exec(location.hash);
    return found ? Number(found[1]) : null;
  }

  async function openSession(id, fromAddress) {
    const page = await api("api/sessions/" + id + "/messages?limit=" + PAGE);
    if (!fromAddress && sessionInAddress() !== id) {
      if (sessionInAddress() === null) history.replaceState(null, "", "#session=" + id);
      else history.pushState(null, "", "#session=" + id);
    }
    state.current = id;
    state.nextBefore = page.next_before;
    el.log.replaceChildren(...page.messages.map(renderMessage));
    el.loadOlder.hidden = page.next_before === null;
    renderSessions();
    showTitle();
    if (narrow.matches) foldSessions(true);
    scrollToEnd();
    el.message.focus();
  }

  function foldSessions(folded) { // on a phone: the conversation, or the session list too
    el.layout.classList.toggle("sessions-folded", folded);
    el.toggleSessions.setAttribute("aria-expanded", String(!folded));
  }

  async function loadOlder() {
    if (state.current === null || state.nextBefore === null) return;
    const id = state.current;
    const page = await api("api/sessions/" + id + "/messages?limit=" + PAGE + "&before=" + state.nextBefore);
    if (state.current !== id) return;
    const height = el.conversation.scrollHeight;
    el.log.prepend(...page.messages.map(renderMessage));
    state.nextBefore = page.next_before;
    el.loadOlder.hidden = page.next_before === null;
    el.conversation.scrollTop += el.conversation.scrollHeight - height; // keep the reader's place
  }

  function startNew() {
    if (sessionInAddress() !== null) history.replaceState(null, "", location.pathname + location.search);
    state.current = null;
    state.nextBefore = null;
    el.log.replaceChildren();
    el.loadOlder.hidden = true;
    renderSessions();
    showTitle();
  }

  async function createSession(name) {
    const body = name ? { name } : {};
    const session = await api("api/sessions", { method: "POST", body });
    state.sessions.unshift(session);
    return session;
  }

  async function deleteSession(session) {
    if (!window.confirm("Delete the session " + sessionLabel(session) + " and its messages?")) return;
    await api("api/sessions/" + session.id, { method: "DELETE" });
    if (state.current === session.id) startNew();
    await loadSessions();
    el.message.focus(); // the deleted session's button is gone: focus fell to the page
  }

  async function send(text) {
    if (state.current === null) {
      const session = await createSession(null);
      history.replaceState(null, "", "#session=" + session.id);
      state.current = session.id;
      renderSessions();
      showTitle();
    }
    const sessionId = state.current;
    const mine = userBubble({ text });
    const reply = botBubble(null);
    reply.classList.add("pending");
    reply.setAttribute("aria-busy", "true");
    reply.dataset.deltas = "0";
    el.log.append(mine, reply);
    scrollToEnd();
    let accepted = false;
    try {
      const response = await request("api/sessions/" + sessionId + "/messages",
                                     { method: "POST", body: { text, stream: true }, accept: "text/event-stream" });
      accepted = true; // the server has stored the message: from here a failure is not "not sent"
      let streamed = "";
      let final = null;
      let failure = null;
      await readEvents(response, (name, data) => {
        const payload = JSON.parse(data);
        if (name === "delta") {
          streamed += payload.text;
          fillText(reply.querySelector(".text"), streamed);
          reply.dataset.deltas = String(Number(reply.dataset.deltas) + 1);
          scrollToEnd();
        } else if (name === "reply") {
          final = payload;
        } else if (name === "error" || payload.error) {
          failure = payload.error || payload;
        }
      });
      if (failure) throw new ApiError(0, failure.message || "the reply failed", failure.code);
      if (!final) throw new Error("The reply stream ended before the reply");
      if (state.current !== sessionId) return; // the reader moved on; the reply is stored
      if (!reply.isConnected) { // the reader left and came back meanwhile: show what is stored now
        await openSession(sessionId, true);
        return;
      }
      mine.dataset.messageId = final.in_reply_to;
      finishBot(reply, final);
      scrollToEnd();
    } catch (error) {
      if (accepted) {
        // The stream broke after the server took the message (and perhaps stored the reply):
        // show what is stored rather than offer the text again, which would store it twice.
        error.stored = true;
        if (state.current === sessionId) await openSession(sessionId).catch(() => {});
      } else {
        mine.classList.add("failed");
        mine.querySelector(".text").append(node("span", "visually-hidden", " (not sent)")); // read, not shown
        reply.remove();
      }
      throw error;
    } finally {
      loadSessions().catch(showError);
    }
  }

  // --- wiring ---------------------------------------------------------------------------------
  function setBusy(busy) {
    state.busy = busy;
    el.send.disabled = busy;
    el.composer.setAttribute("aria-busy", String(busy));
  }

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    // Blank lines around the message go; the first line's indentation stays (pasted code).
    const text = el.message.value.replace(/^(\s*\n)+/, "").trimEnd();
    if (!text.trim() || state.busy) return;
    setBusy(true);
    run(async () => {
      el.message.value = "";
      try {
        await send(text);
      } catch (error) {
        if (!el.message.value && !error.stored) el.message.value = text; // give the text back to try again
        throw error;
      }
    }).finally(() => {
      setBusy(false);
      el.message.focus();
    });
  });

  // The full hint runs past the box's two rows on a phone (clipped, with a scroll bar): a short
  // one there.
  const hints = {wide: el.message.placeholder, phone: "Type a message"};
  const phone = window.matchMedia("(max-width: 480px)");
  const showHint = () => { el.message.placeholder = phone.matches ? hints.phone : hints.wide; };
  phone.addEventListener("change", showHint);
  showHint();

  el.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });

  el.newSession.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.newSessionName.value.trim();
    run(async () => {
      if (!name) { startNew(); el.message.focus(); return; } // made on its first message
      const session = await createSession(name);
      el.newSessionName.value = "";
      await openSession(session.id);
    });
  });

  // Back to this tab: another tab (or program) may have talked in the open session meanwhile,
  // and this one went on showing, and sending from, an old conversation.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || state.current === null || state.busy) return;
    const shown = state.sessions.find((session) => session.id === state.current);
    run(async () => {
      await loadSessions();
      const now = state.sessions.find((session) => session.id === state.current);
      if (now && shown && now.message_count !== shown.message_count) await openSession(now.id, true);
    });
  });

  el.loadOlder.addEventListener("click", () => run(loadOlder));
  el.toggleSessions.addEventListener("click", () => foldSessions(!el.layout.classList.contains("sessions-folded")));
  el.errorClose.addEventListener("click", clearError);
  el.forgetKey.addEventListener("click", () => {
    storeKey("");
    state.sessions = [];
    state.sessionsLoaded = false; // until the next key's are loaded: not "no sessions yet"
    startNew();
    if (state.auth) run(start);
  });

  async function start() {
    const model = await api("api/model");
    state.auth = !!model.auth;
    if (model.max_message_chars) el.message.maxLength = model.max_message_chars; // refused, not typed
    el.model.textContent = model.name + " · chatbot " + model.chatbot_version;
    document.title = model.name + " · chatbot";
    if (state.auth && !state.key) await askForKey("This server needs an API key.");
    await loadSessions();
    const linked = sessionInAddress();
    if (linked !== null && state.sessions.some((session) => session.id === linked)) {
      await openSession(linked, true);
    } else if (state.current === null && state.sessions.length) {
      await openSession(state.sessions[0].id);
    }
  }

  window.addEventListener("popstate", () => {
    const id = sessionInAddress();
    if (id !== null && id !== state.current && state.sessions.some((session) => session.id === id)) {
      run(() => openSession(id, true));
    }
  });

  el.forgetKey.hidden = !state.key;
  run(start);
})();
