// The livecomments watch page: plain JavaScript, no build step, no external resources.
//
// Transports, in order of preference:
//   1. EventSource on /v1/videos/{id}/events (reconnects itself with ?last_event_id=).
//   2. Long-poll on /v1/videos/{id}/comments?after=<id>&wait=25 when EventSource is
//      missing or fails three times without ever opening.
// In "cdn" mode the stream stays open for control events and comments come from polling
// the snapshot URL with If-None-Match; new ones are spread over the poll interval.
// A video with a big audience is spread over several realtime nodes: before connecting,
// the page reads /v1/videos/{id}/spread and watches through one shard (?shard=N).
//
// User data is only ever written with textContent. Comment ids are decimal strings
// (64-bit Snowflakes), compared by length then lexically.
(() => {
  "use strict";

  const CAP = 200; // comments kept in the DOM
  const BACKLOG = 50; // comments fetched when long-poll starts with nothing shown
  const LONGPOLL_WAIT_S = 25;
  const ERRORS_BEFORE_FALLBACK = 3; // EventSource errors without any open -> long-poll
  const MAX_ID = "9223372036854775807";
  const REMOVED_MEMORY = 2000; // removed ids remembered so replays don't bring them back
  const TOKEN_KEY = "livecomments.token";
  const GUEST_KEY = "livecomments.guest"; // "1" when the stored token came from guest sign-in
  const NAME_KEY = "livecomments.name";

  // ---------------------------------------------------------------- basics

  const $ = (id) => document.getElementById(id);
  const listEl = $("comments");
  const statusEl = $("status");
  const noticeEl = $("notice");
  const errorEl = $("error");
  const formEl = $("post");
  const textEl = $("text");
  const nameEl = $("name");
  const sendEl = $("send");
  const template = $("comment-template");

  const videoId = (() => {
    const v = document.body.dataset.videoId || "";
    if (/^[A-Za-z0-9_-]{1,64}$/.test(v)) return v;
    const m = location.pathname.match(/\/watch\/([A-Za-z0-9_-]{1,64})\/?$/);
    return m ? m[1] : "default";
  })();
  const base = `/v1/videos/${encodeURIComponent(videoId)}`;

  /** Compare two decimal id strings without losing precision. */
  function cmpId(a, b) {
    a = String(a);
    b = String(b);
    if (a.length !== b.length) return a.length - b.length;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  const maxId = (a, b) => (a == null ? b : b == null ? a : cmpId(a, b) >= 0 ? a : b);
  const isId = (v) => typeof v === "string" && /^\d{1,20}$/.test(v);

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const jitter = (lo, hi) => lo + Math.random() * (hi - lo);
  /** Reconnect delay: 0.25-0.5 s, doubling, at most 5-10 s. */
  const backoff = (n) => {
    const ms = Math.min(10000, 500 * 2 ** Math.min(n, 5));
    return jitter(ms / 2, ms);
  };

  function parse(data) {
    try {
      return JSON.parse(data);
    } catch {
      return null;
    }
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") {
      try {
        return crypto.randomUUID(); // secure contexts only (https, localhost)
      } catch {
        /* fall through */
      }
    }
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  const storage = {
    get(k) {
      try {
        return localStorage.getItem(k);
      } catch {
        return null;
      }
    },
    set(k, v) {
      try {
        if (v == null) localStorage.removeItem(k);
        else localStorage.setItem(k, v);
      } catch {
        /* storage disabled: keep it in memory only */
      }
    },
  };

  // ---------------------------------------------------------------- identity

  function decodeJwt(token) {
    try {
      let p = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      p += "=".repeat((4 - (p.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(p), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
  }

  const auth = {
    token: null,
    claims: null,
    signing: null, // in-flight guest sign-in

    load() {
      // A token handed over in the fragment (#token=...) wins, e.g. for a moderator;
      // the fragment never reaches the server and is removed from the address bar.
      const m = location.hash.match(/[#&]token=([^&]+)/);
      if (m) {
        this.set(decodeURIComponent(m[1]), false);
        history.replaceState(null, "", location.pathname + location.search);
      } else {
        const t = storage.get(TOKEN_KEY);
        if (t) this.set(t, storage.get(GUEST_KEY) === "1", false);
      }
    },
    set(token, guest, persist = true) {
      this.token = token;
      this.claims = decodeJwt(token) || {};
      if (persist) {
        storage.set(TOKEN_KEY, token);
        storage.set(GUEST_KEY, guest ? "1" : null);
      }
    },
    clear() {
      this.token = null;
      this.claims = null;
      storage.set(TOKEN_KEY, null);
      storage.set(GUEST_KEY, null);
    },
    get userId() {
      return (this.claims && this.claims.sub) || null;
    },
    valid() {
      if (!this.token) return false;
      const exp = this.claims && this.claims.exp;
      return !(typeof exp === "number" && exp * 1000 < Date.now() + 5000);
    },
    /** A usable token, signing in as a guest when there is none. */
    async ensure() {
      if (this.valid()) return this.token;
      return this.signIn();
    },
    signIn() {
      if (!this.signing) {
        this.signing = (async () => {
          let r;
          try {
            r = await fetch("/v1/auth/guest", {
              method: "POST",
              headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ name: myName() }),
            });
          } catch {
            throw new Error("Could not reach the server to sign in.");
          }
          const body = await r.json().catch(() => ({}));
          if (!r.ok || !body.token) {
            throw new Error(body.detail || `Sign-in failed (${r.status}).`);
          }
          this.set(body.token, true);
          return body.token;
        })().finally(() => {
          this.signing = null;
        });
      }
      return this.signing;
    },
  };

  function myName() {
    return nameEl.value.trim() || (auth.claims && auth.claims.name) || "Guest";
  }

  /** Who may delete a comment: its author, the streamer, moderators and admins. */
  function canDelete(c) {
    const cl = auth.claims;
    if (!cl || !auth.token || c.id == null) return false;
    if (c.author && cl.sub && c.author.id === cl.sub) return true;
    const roles = Array.isArray(cl.roles) ? cl.roles : [];
    if (roles.includes("moderator") || roles.includes("admin")) return true;
    return Array.isArray(cl.streams) && cl.streams.includes(videoId);
  }

  /** Who may ban a comment's author on this video: moderators, admins and the streamer,
   *  for anyone but themselves. */
  function canBan(c) {
    const cl = auth.claims;
    if (!cl || !auth.token || !c.author || c.author.id === cl.sub) return false;
    const roles = Array.isArray(cl.roles) ? cl.roles : [];
    if (roles.includes("moderator") || roles.includes("admin")) return true;
    return Array.isArray(cl.streams) && cl.streams.includes(videoId);
  }

  // ---------------------------------------------------------------- status line

  const state = { transport: "none", conn: "connecting", mode: "push", interval: 0 };

  function setStatus(patch) {
    Object.assign(state, patch);
    statusEl.dataset.transport = state.transport;
    statusEl.dataset.conn = state.conn;
    statusEl.dataset.mode = state.mode;
    let text;
    if (state.conn === "open") text = state.transport === "longpoll" ? "long-poll" : "connected";
    else if (state.conn === "reconnecting") text = state.transport === "longpoll" ? "long-poll: reconnecting…" : "reconnecting…";
    else text = "connecting…";
    if (state.mode === "sampled") text += " · busy stream: showing a sample of comments";
    else if (state.mode === "cdn") text += ` · very busy stream: comments refresh every ${Math.round(state.interval / 100) / 10 || 1} s`;
    statusEl.textContent = text;
  }

  let noticeTimer = null;
  function showNotice(text, ms = 8000) {
    noticeEl.textContent = text;
    noticeEl.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      noticeEl.hidden = true;
    }, ms);
  }

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  // ---------------------------------------------------------------- the list

  const byId = new Map(); // id -> li, confirmed comments in the DOM
  const pendingByClient = new Map(); // client_id -> li, own comments not confirmed yet (or failed)
  const removed = new Set(); // ids taken away; insertion-ordered so the oldest can be forgotten
  let lastId = null; // highest id delivered by the server (stream, long-poll, snapshot)

  function rememberRemoved(id) {
    removed.add(id);
    if (removed.size > REMOVED_MEMORY) removed.delete(removed.values().next().value);
  }

  function nearBottom() {
    return listEl.scrollHeight - listEl.scrollTop - listEl.clientHeight < 48;
  }
  function scrollDownIf(wasNear) {
    if (wasNear) listEl.scrollTop = listEl.scrollHeight;
  }

  function newLi() {
    return template.content.firstElementChild.cloneNode(true);
  }

  function fill(li, c) {
    const author = c.author || {};
    li.querySelector(".author").textContent = author.name || "?";
    li.classList.toggle("verified", !!author.verified);
    li.classList.toggle("mine", !!(auth.userId && author.id === auth.userId));
    li.querySelector(".text").textContent = c.text == null ? "" : String(c.text);
    const meta = li.querySelector(".meta");
    if (typeof c.created_at === "number") {
      const d = new Date(c.created_at);
      const time = document.createElement("time");
      time.dateTime = d.toISOString();
      time.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      time.title = d.toLocaleString();
      meta.replaceChildren(time);
    }
    if (author.id) li.dataset.authorId = author.id;
    if (c.id != null) li.dataset.id = String(c.id);
    if (c.client_id) li.dataset.clientId = c.client_id;
    renderActions(li, c);
  }

  /** Per-comment buttons: retry a failed post; delete; for moderators a ban menu. */
  function renderActions(li, c) {
    const box = li.querySelector(".actions");
    box.replaceChildren();
    if (li.dataset.state === "failed") {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.dataset.action = "retry";
      retry.textContent = "retry";
      box.append(retry);
    } else if (canDelete(c)) {
      const del = document.createElement("button");
      del.type = "button";
      del.dataset.action = "delete";
      del.title = "Delete this comment";
      del.setAttribute("aria-label", "Delete this comment");
      del.textContent = "✕";
      box.append(del);
    }
    if (li.dataset.state !== "failed" && canBan(c)) {
      li.dataset.author = c.author.id;
      const menu = document.createElement("details");
      menu.className = "ban-menu";
      const summary = document.createElement("summary");
      summary.textContent = "ban";
      summary.title = `Ban ${c.author.name || c.author.id} on this video`;
      menu.append(summary);
      for (const [mode, label] of [["shadow", "shadow-ban"], ["overt", "ban"]]) {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.action = "ban";
        b.dataset.mode = mode;
        b.textContent = label;
        menu.append(b);
      }
      box.append(menu);
    }
  }

  async function banAuthor(li, mode) {
    const user = li.dataset.author;
    if (!user) return;
    let r;
    try {
      r = await fetch(`${base}/bans`, {
        method: "POST",
        headers: { Authorization: `Bearer ${auth.token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ user_id: user, mode }),
      });
    } catch {
      showError("Network error: the ban was not made.");
      return;
    }
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      const name = li.querySelector(".author")?.textContent || user;
      showNotice(mode === "shadow" ? `${name} is shadow-banned here` : `${name} is banned here`);
      const menu = li.querySelector(".ban-menu");
      if (menu) menu.open = false;
    } else {
      showError(body.detail || `Could not ban (${r.status}).`);
    }
  }

  /** Insert a confirmed li at its place by id; pending/failed ones stay at the end. */
  function insertSorted(li, id) {
    let node = listEl.lastElementChild;
    while (node && (!node.dataset.id || node.dataset.state !== "confirmed" || cmpId(node.dataset.id, id) > 0)) {
      node = node.previousElementSibling;
    }
    if (node) node.after(li);
    else listEl.prepend(li);
  }

  function enforceCap() {
    while (byId.size > CAP) {
      const first = listEl.querySelector('li[data-state="confirmed"]');
      if (!first) break;
      byId.delete(first.dataset.id);
      first.remove();
    }
    // Failed comments nobody retried don't pile up forever either.
    const failed = listEl.querySelectorAll('li[data-state="failed"]');
    for (let i = 0; i < failed.length - 20; i++) {
      pendingByClient.delete(failed[i].dataset.clientId);
      failed[i].remove();
    }
  }

  function oldestShown() {
    const first = listEl.querySelector('li[data-state="confirmed"]');
    return first ? first.dataset.id : null;
  }

  /** A comment delivered by the server over the stream, long-poll or snapshot. */
  function deliver(c) {
    if (!c || c.id == null) return;
    const id = String(c.id);
    lastId = maxId(lastId, id);
    place(c);
  }

  /** Show a confirmed comment exactly once, confirming our pending copy if it is ours. */
  function place(c) {
    const id = String(c.id);
    const mine = c.client_id ? pendingByClient.get(c.client_id) : undefined;
    if (removed.has(id)) {
      if (mine) {
        pendingByClient.delete(c.client_id);
        mine.remove();
      }
      return;
    }
    if (byId.has(id)) return;
    const wasNear = nearBottom();
    let li;
    if (mine) {
      pendingByClient.delete(c.client_id);
      li = mine;
      li.remove();
      delete li.dataset.pending;
      li.removeAttribute("title");
    } else {
      const oldest = oldestShown();
      if (byId.size >= CAP && oldest !== null && cmpId(id, oldest) < 0) return; // older than all we keep
      li = newLi();
    }
    li.dataset.state = "confirmed";
    fill(li, c);
    byId.set(id, li);
    insertSorted(li, id);
    enforceCap();
    scrollDownIf(wasNear || !!mine);
  }

  function removeComment(id) {
    id = String(id);
    rememberRemoved(id);
    const li = byId.get(id);
    if (li) {
      byId.delete(id);
      li.remove();
    }
    cdn.queue = cdn.queue.filter((c) => String(c.id) !== id);
  }

  /** `reset`: what we show is too old to resume from; the backlog follows. */
  function resetList() {
    for (const li of byId.values()) li.remove();
    byId.clear();
    cdn.queue = [];
    lastId = null;
  }

  // ---------------------------------------------------------------- posting

  function addPending(text) {
    const clientId = uuid();
    const li = newLi();
    li.dataset.state = "pending";
    li.dataset.pending = "true";
    fill(li, {
      author: { id: auth.userId, name: myName(), verified: false },
      text,
      client_id: clientId,
      created_at: Date.now(),
    });
    pendingByClient.set(clientId, li);
    listEl.append(li);
    listEl.scrollTop = listEl.scrollHeight;
    return li;
  }

  function markFailed(li, message) {
    if (!li.isConnected || li.dataset.state !== "pending") return;
    li.dataset.state = "failed";
    delete li.dataset.pending;
    li.title = message;
    renderActions(li, {});
    showError(message);
  }

  async function send(li, text) {
    const clientId = li.dataset.clientId;
    let token;
    try {
      token = await auth.ensure();
    } catch (e) {
      markFailed(li, e.message);
      return;
    }
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await fetch(`${base}/comments`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
          body: JSON.stringify({ text, client_id: clientId }),
        });
      } catch {
        // It may still have been stored: if it comes over the stream it gets confirmed.
        markFailed(li, "Network error: the comment may not have been sent.");
        return;
      }
      if (r.ok) {
        const c = await r.json().catch(() => null);
        if (c && c.id != null) place(c); // confirms the pending copy; the feed cursor stays put
        showError("");
        return;
      }
      if (r.status === 401 && attempt === 0) {
        auth.clear();
        try {
          token = await auth.signIn();
        } catch (e) {
          markFailed(li, e.message);
          return;
        }
        continue;
      }
      const body = await r.json().catch(() => ({}));
      let message = body.detail || `The server refused the comment (${r.status}).`;
      if (r.status === 429) {
        const after = r.headers.get("Retry-After");
        if (after) message += ` Try again in ${after} s.`;
      }
      markFailed(li, message);
      return;
    }
  }

  formEl.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = textEl.value.trim();
    if (!text) return;
    textEl.value = "";
    showError("");
    const li = addPending(text);
    send(li, text);
    textEl.focus();
  });

  async function deleteComment(li) {
    const id = li.dataset.id;
    if (!id) return;
    let r;
    try {
      r = await fetch(`${base}/comments/${encodeURIComponent(id)}`, {
        method: "DELETE",
        headers: { Authorization: `Bearer ${auth.token}` },
      });
    } catch {
      showError("Network error: the comment was not deleted.");
      return;
    }
    if (r.ok || r.status === 404) {
      removeComment(id);
    } else {
      const body = await r.json().catch(() => ({}));
      showError(body.detail || `Could not delete the comment (${r.status}).`);
    }
  }

  listEl.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const li = button.closest("li");
    if (button.dataset.action === "delete") {
      deleteComment(li);
    } else if (button.dataset.action === "ban") {
      banAuthor(li, button.dataset.mode);
    } else if (button.dataset.action === "retry") {
      li.dataset.state = "pending";
      li.dataset.pending = "true";
      li.removeAttribute("title");
      renderActions(li, {});
      showError("");
      send(li, li.querySelector(".text").textContent);
    }
  });

  nameEl.value = storage.get(NAME_KEY) || "";
  nameEl.addEventListener("change", () => {
    const name = nameEl.value.trim();
    storage.set(NAME_KEY, name || null);
    // A guest token carries its name: sign in again, with the new name, on the next post.
    if (auth.token && storage.get(GUEST_KEY) === "1" && auth.claims && auth.claims.name !== name) {
      auth.clear();
    }
  });

  // ---------------------------------------------------------------- spread
  // Before each connection the page asks over how many shards the video's audience is
  // spread (the edge caches the answer for a second) and watches through one of them:
  // the one it has while the count still includes it (its node has the room warm),
  // otherwise one drawn with the emptier shards more likely (backpressure/spread.py,
  // choose_shard: the same rule). One shard: no parameter at all, as before.

  const MAX_SHARDS = 999;
  let shard = null; // null until a count was read

  function pickShard(shards, loads) {
    if (shard !== null && shard < shards) return shard;
    const r = Math.random();
    const known = Array.isArray(loads) && loads.length === shards && loads.every((n) => Number.isInteger(n));
    if (!known) return Math.min(shards - 1, Math.floor(r * shards));
    // Each shard's gap to the fullest one, plus one: new shards fill first.
    const top = Math.max(...loads);
    const weights = loads.map((n) => top - Math.max(0, n) + 1);
    let point = r * weights.reduce((a, b) => a + b, 0);
    for (let i = 0; i < shards; i++) {
      point -= weights[i];
      if (point < 0) return i;
    }
    return shards - 1;
  }

  /** Read the shard count and pick a shard; on any failure keep the one we have. */
  async function chooseShard() {
    try {
      const r = await fetch(`${base}/spread`);
      if (!r.ok) return;
      const body = await r.json();
      const n = Number(body.shards);
      if (Number.isInteger(n) && n >= 1 && n <= MAX_SHARDS) shard = pickShard(n, body.viewers);
    } catch {
      /* an older server, or the network: watch as before */
    }
  }

  // ---------------------------------------------------------------- EventSource

  let es = null;
  let esGen = 0; // callbacks of replaced connections are ignored
  let everOpened = false; // some EventSource connection opened on this page
  let errorsBeforeOpen = 0;
  let failures = 0; // consecutive failed connections, for the backoff
  let reconnectTimer = null;
  let streamTokenSuspect = false; // a connection with the token failed: try once without
  let modeConfirmed = true; // false from a (re)connect until the server states the mode
  let resuming = false; // left cdn mode: the stream's comments wait for the resume

  function closeStream() {
    esGen++;
    if (es) es.close();
    es = null;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
  }

  function scheduleReconnect(ms) {
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connectStream, ms);
  }

  function connectStream() {
    closeStream();
    const gen = esGen;
    setStatus({ transport: "sse", conn: everOpened ? "reconnecting" : "connecting" });
    chooseShard().then(() => {
      if (gen === esGen) openStream(gen); // not closed or replaced meanwhile
    });
  }

  function openStream(gen) {
    resuming = false;
    const params = new URLSearchParams();
    const token = auth.valid() && !streamTokenSuspect ? auth.token : null;
    if (token) params.set("token", token);
    // A fresh EventSource sends no Last-Event-ID header, so name the cursor here.
    if (lastId !== null) params.set("last_event_id", lastId);
    if (shard) params.set("shard", String(shard));
    const query = params.toString();
    const src = new EventSource(`${base}/events${query ? `?${query}` : ""}`);
    es = src;
    let opened = false;
    modeConfirmed = state.mode !== "cdn";

    src.onopen = () => {
      if (gen !== esGen) return;
      opened = true;
      everOpened = true;
      errorsBeforeOpen = 0;
      failures = 0;
      setStatus({ conn: "open" });
    };
    src.onerror = () => {
      if (gen !== esGen) return;
      // Reconnect ourselves rather than let the browser do it: the URL would still
      // carry the first last_event_id, and a non-200 answer would end it for good.
      closeStream();
      if (!opened) {
        errorsBeforeOpen++;
        if (token) streamTokenSuspect = true;
        else if (streamTokenSuspect) streamTokenSuspect = false;
      }
      if (!everOpened && errorsBeforeOpen >= ERRORS_BEFORE_FALLBACK) {
        startLongPoll();
        return;
      }
      setStatus({ conn: "reconnecting" });
      scheduleReconnect(backoff(failures++));
    };

    const on = (type, handler) =>
      src.addEventListener(type, (ev) => {
        if (gen !== esGen) return;
        handler(parse(ev.data) || {}, ev);
      });

    on("comment", (c) => {
      // Leaving cdn mode, the resume replays everything after lastId; showing what the old
      // stream carries meanwhile would move lastId past the comments posted since the last
      // snapshot, and the resume would skip them.
      if (resuming) return;
      if (state.mode === "cdn" && !modeConfirmed) {
        // Comments over the stream after a reconnect: the video is back to push.
        stopCdn();
        setStatus({ mode: "push" });
      }
      deliver(c);
    });
    on("remove", (d) => {
      if (d.id != null) removeComment(d.id);
    });
    on("mode", onMode);
    on("gap", (d) => {
      const n = Number(d.missed) || 0;
      showNotice(n === 1 ? "1 comment skipped" : `${n} comments skipped`);
    });
    on("goaway", () => {
      // The server is draining: come back after a jitter so not everyone does at once.
      closeStream();
      setStatus({ conn: "reconnecting" });
      scheduleReconnect(jitter(500, 3000));
    });
    on("reset", resetList);
  }

  function onMode(m) {
    modeConfirmed = true;
    const mode = m.mode === "sampled" || m.mode === "cdn" ? m.mode : "push";
    if (mode === "cdn") {
      const interval = Math.min(60000, Math.max(250, Number(m.interval_ms) || 1000));
      setStatus({ mode, interval });
      startCdn(m.snapshot_url || `${base}/snapshot.json`, interval);
      return;
    }
    const wasCdn = cdn.active;
    stopCdn();
    setStatus({ mode });
    if (wasCdn && es) {
      // Back to push: the stream did not carry comments meanwhile; resume it from the
      // last id shown (after a short jitter, everyone is told at once). Until then the
      // old stream's comments are left to the resume (see the comment handler).
      resuming = true;
      const gen = esGen;
      setTimeout(() => {
        if (gen === esGen) connectStream();
      }, jitter(0, 500));
    }
  }

  // ---------------------------------------------------------------- CDN snapshots

  const cdn = { active: false, gen: 0, url: "", interval: 1000, etag: null, timer: null, drip: null, queue: [], first: true };

  function startCdn(url, interval) {
    if (cdn.active && cdn.url === url) {
      cdn.interval = interval;
      return;
    }
    stopCdn();
    // With nothing shown yet the first snapshot is a backlog; otherwise it continues the flow.
    Object.assign(cdn, { active: true, url, interval, etag: null, first: lastId === null });
    pollSnapshot(cdn.gen);
  }

  function stopCdn() {
    cdn.gen++;
    cdn.active = false;
    clearTimeout(cdn.timer);
    flushQueue();
  }

  function flushQueue() {
    clearTimeout(cdn.drip);
    cdn.drip = null;
    const q = cdn.queue;
    cdn.queue = [];
    for (const c of q) deliver(c);
  }

  async function pollSnapshot(gen) {
    try {
      const headers = {};
      if (cdn.etag) headers["If-None-Match"] = cdn.etag;
      const r = await fetch(cdn.url, { headers });
      if (gen !== cdn.gen) return;
      if (r.ok) {
        const snap = await r.json();
        if (gen !== cdn.gen) return;
        cdn.etag = r.headers.get("ETag");
        applySnapshot(snap);
      } else if (r.status !== 304) {
        cdn.etag = null;
      }
    } catch {
      /* try again next interval */
    } finally {
      if (gen === cdn.gen) cdn.timer = setTimeout(() => pollSnapshot(gen), cdn.interval);
    }
  }

  function applySnapshot(snap) {
    for (const r of snap.removed || []) removeComment(r && typeof r === "object" ? r.id : r);
    flushQueue(); // whatever is left from the last interval goes first
    const comments = (snap.comments || []).filter((c) => c && isId(String(c.id)));
    comments.sort((a, b) => cmpId(a.id, b.id)); // oldest or newest first: either way
    const fresh = [];
    for (const c of comments) {
      const id = String(c.id);
      if (removed.has(id) || byId.has(id)) continue;
      if (c.client_id && pendingByClient.has(c.client_id)) {
        deliver(c); // our own: confirm it now
      } else if (lastId === null || cmpId(id, lastId) > 0) {
        fresh.push(c);
      }
    }
    if (cdn.first) {
      // Nothing to be continuous with yet: show them as a backlog.
      cdn.first = false;
      for (const c of fresh.slice(-CAP)) deliver(c);
      return;
    }
    // Spread the new ones over the interval so the flow looks continuous.
    const ticks = Math.max(1, Math.min(fresh.length, Math.floor(cdn.interval / 50)));
    const perTick = Math.ceil(fresh.length / ticks);
    const step = cdn.interval / ticks;
    cdn.queue = fresh;
    const drip = () => {
      cdn.drip = null;
      for (const c of cdn.queue.splice(0, perTick)) deliver(c);
      if (cdn.queue.length) cdn.drip = setTimeout(drip, step);
    };
    drip();
  }

  // ---------------------------------------------------------------- long-poll

  let lpGen = 0;

  async function startLongPoll() {
    closeStream();
    stopCdn();
    const gen = ++lpGen;
    setStatus({ transport: "longpoll", conn: "connecting", mode: "push" });
    await chooseShard();
    if (gen !== lpGen) return;
    const headers = () => (auth.valid() ? { Authorization: `Bearer ${auth.token}` } : {});
    let fails = 0;
    let cursor = lastId;
    while (gen === lpGen) {
      const started = Date.now();
      const ctrl = new AbortController();
      const timeout = setTimeout(() => ctrl.abort(), (LONGPOLL_WAIT_S + 20) * 1000);
      try {
        let url;
        if (cursor === null) {
          // Nothing shown yet: the recent history (newest first) is the backlog.
          url = `${base}/comments?before=${MAX_ID}&limit=${BACKLOG}`;
        } else {
          url = `${base}/comments?after=${encodeURIComponent(cursor)}&wait=${LONGPOLL_WAIT_S}`;
          if (shard) url += `&shard=${shard}`;
        }
        const r = await fetch(url, { headers: headers(), signal: ctrl.signal, cache: "no-store" });
        if (gen !== lpGen) return;
        if (!r.ok && cursor === null && r.status >= 400 && r.status < 500) {
          cursor = "0"; // no history page: everything the server still retains instead
          continue;
        }
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        const data = await r.json();
        if (gen !== lpGen) return;
        for (const x of data.removed || []) removeComment(x && typeof x === "object" ? x.id : x);
        const comments = (data.comments || []).filter((c) => c && c.id != null);
        comments.sort((a, b) => cmpId(a.id, b.id));
        for (const c of comments) deliver(c);
        const next = cursor === null ? null : isId(String(data.next)) ? String(data.next) : null;
        cursor = maxId(maxId(cursor === null ? "0" : cursor, next), lastId);
        fails = 0;
        setStatus({ conn: "open" });
        if (!comments.length && Date.now() - started < 250) await sleep(1000); // no busy loop
      } catch {
        if (gen !== lpGen) return;
        setStatus({ conn: "reconnecting" });
        await sleep(backoff(fails++));
      } finally {
        clearTimeout(timeout);
      }
    }
  }

  // ---------------------------------------------------------------- start

  auth.load();
  if (!nameEl.value && auth.claims && auth.claims.name) nameEl.value = auth.claims.name;
  $("title").textContent = `live comments · ${videoId}`;
  document.title = `${videoId} · live comments`;
  setStatus({});

  function start() {
    if (typeof window.EventSource === "function") connectStream();
    else startLongPoll();
  }
  start();

  window.addEventListener("pagehide", () => {
    closeStream();
    lpGen++;
    stopCdn();
  });
  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted) return; // back from the back/forward cache: resume where we were
    if (state.transport === "longpoll") startLongPoll();
    else connectStream();
  });

  // For debugging from the console (and tests): read-only views of the state.
  window.livecomments = Object.freeze({
    videoId,
    get lastId() {
      return lastId;
    },
    get transport() {
      return state.transport;
    },
    get mode() {
      return state.mode;
    },
    get userId() {
      return auth.userId;
    },
    get shard() {
      return shard;
    },
  });
})();
