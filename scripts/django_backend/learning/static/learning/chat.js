// The demo web client: talks to chat-service exactly as a platform frontend
// would (CONTRACT §3 WebSocket, §4 REST, §6 continuity). Plain JS, no build step.
"use strict";

const CHAT_HTTP = JSON.parse(document.getElementById("chat-service-url").textContent).replace(/\/+$/, "");
const CHAT_WS = CHAT_HTTP.replace(/^http/, "ws") + "/ws";
const DEMO_PASSWORDS = { mentor: "mentor-pass", alice: "alice-pass", bob: "bob-pass" };
const PAGE_SIZE = 50; // messages per history page (REST `limit`)
const TYPING_IDLE_MS = 3000; // this long without a keystroke ends our typing state
const TYPING_REPEAT_MS = 3000; // a held typing state is re-announced this often (the server forgets it after 6 s)
const TYPING_SHOWN_MS = 8000; // fallback only: the server itself ends a stuck indicator after 6 s
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const READ_DEBOUNCE_MS = 300;
const INBOX_POLL_MS = 5000; // the inbox covers conversations this page has no socket for

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  me: null, // {id, username, is_mentor, lessons}
  conv: null, // the open conversation (see openConversation)
  ws: null,
  attempt: 0, // failed connection attempts in a row: the backoff's exponent
  reconnectTimer: null,
  // Un-acknowledged messages per conversation ("lessonId:studentId" ->
  // Map(client_id -> {text, createdAt})). They outlive reconnects and
  // conversation switches and are resent under the same client_id: the
  // server neither stores nor delivers a duplicate.
  outboxes: new Map(),
  inbox: [], // the last GET /conversations
  inboxRequest: 0, // answers to older requests are dropped
  inboxRefreshTimer: null,
  typingSentAt: 0,
  typingIdleTimer: null,
  peerTypingTimer: null,
};

// ---------- login and conversation choice ----------

document.querySelectorAll(".demo-user").forEach((button) => {
  button.addEventListener("click", () => {
    $("username").value = button.dataset.user;
    $("password").value = DEMO_PASSWORDS[button.dataset.user];
  });
});

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const tokens = await djangoJson("/api/token/", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    state.token = tokens.access;
    state.me = await djangoJson("/api/demo/me/", { headers: { Authorization: `Bearer ${state.token}` } });
  } catch (err) {
    $("login-error").textContent = `Login failed: ${err.message}`;
    return;
  }
  $("whoami").textContent = `${state.me.username} (${state.me.is_mentor ? "mentor" : "student"}, id ${state.me.id})`;
  $("logout").hidden = false;
  $("login-form").hidden = true;
  $("inbox-title").textContent = state.me.is_mentor ? "Inbox (longest waiting first)" : "Conversations";
  $("inbox-card").hidden = false;
  showPicker();
  const poll = () => refreshInbox().catch(() => {}); // shown in the inbox card
  poll();
  setInterval(poll, INBOX_POLL_MS);
});

async function djangoJson(path, init) {
  const response = await fetch(path, init);
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return response.json();
}

function showPicker() {
  const lessons = state.me.lessons;
  $("lesson").replaceChildren(
    ...lessons.map((l) => new Option(`${l.course} — ${l.title} (lesson ${l.id})`, String(l.id))),
  );
  $("student-label").hidden = !state.me.is_mentor;
  const fillStudents = () => {
    const lesson = lessons.find((l) => String(l.id) === $("lesson").value);
    const students = lesson ? lesson.students : [];
    $("student").replaceChildren(...students.map((s) => new Option(`${s.username} (id ${s.id})`, String(s.id))));
  };
  $("lesson").onchange = fillStudents;
  fillStudents();
  $("open-chat").disabled = lessons.length === 0;
  $("pick-form").hidden = false;
}

$("pick-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const lesson = state.me.lessons.find((l) => String(l.id) === $("lesson").value);
  if (!lesson) return;
  openConversation(lesson, state.me.is_mentor ? Number($("student").value) : state.me.id);
});

$("logout").addEventListener("click", () => {
  leaveConversation();
  location.reload();
});

function convKey(lessonId, studentId) {
  return `${lessonId}:${studentId}`;
}

function outbox(key) {
  let box = state.outboxes.get(key);
  if (!box) {
    box = new Map();
    state.outboxes.set(key, box);
  }
  return box;
}

// Shows one conversation: the newest page over REST first, then a socket
// with since_seq = the highest seq shown, so nothing between the two is lost.
async function openConversation(lesson, studentId) {
  const peer = state.me.is_mentor ? lesson.students.find((s) => s.id === studentId) : lesson.teacher;
  if (!peer) return;
  leaveConversation();
  const conv = {
    key: convKey(lesson.id, studentId),
    lesson,
    studentId,
    peer,
    id: null,
    byId: new Map(), // message id -> row
    pendingEls: new Map(), // client_id -> row of an un-acknowledged message
    minSeq: 0, // the rows shown are always the contiguous seqs minSeq..maxSeq
    maxSeq: 0,
    newestTheirs: 0, // highest seq shown from the other participant
    myReadSeq: 0, // my read cursor, as the server last told or as I last sent
    peerReadSeq: 0, // the other participant's cursor: "seen" ticks up to it
    readTimer: null,
    ready: false, // the socket has finished its replay: live from here on
    loadingOlder: false,
  };
  state.conv = conv;
  $("messages").replaceChildren();
  $("chat").hidden = false;
  $("chat-error").textContent = "";
  $("peer-name").textContent = `${lesson.title} — with ${peer.username}`;
  setPresence(false);
  showPeerTyping(false);
  updateUnread(conv);
  updateLoadOlder(conv);
  renderInbox();
  for (const [clientId, item] of outbox(conv.key)) renderPending(conv, clientId, item);
  await loadNewest(conv);
  if (state.conv !== conv) return; // another conversation was opened meanwhile
  state.attempt = 0;
  connect(conv);
}

function leaveConversation() {
  const conv = state.conv;
  if (!conv) return;
  stopTyping();
  clearTimeout(conv.readTimer);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  state.conv = null;
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000, "left the conversation");
}

// ---------- WebSocket life: connect, recover, reconnect, resend ----------

function connect(conv) {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.conv !== conv) return;
  if (state.ws) {
    // One socket per page: a leftover is closed, and its events are ignored.
    const old = state.ws;
    state.ws = null;
    old.close(1000, "replaced");
  }
  const params = new URLSearchParams({
    token: state.token,
    user_id: String(state.me.id),
    lesson_id: String(conv.lesson.id),
    since_seq: String(conv.maxSeq),
  });
  if (state.me.is_mentor) params.set("student_id", String(conv.studentId));
  conv.ready = false;
  setConn("connecting", "connecting…");
  const ws = new WebSocket(`${CHAT_WS}?${params}`);
  state.ws = ws;
  ws.onopen = () => {
    if (state.ws === ws) setConn("recovering", "connected, catching up…");
  };
  ws.onmessage = (event) => {
    if (state.ws !== ws) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    handleEvent(conv, data);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    conv.ready = false;
    setPresence(false);
    showPeerTyping(false);
    // The browser hides a refused upgrade's HTTP status (it shows 1006); say so.
    const why = event.code === 1006 ? "connection lost or refused" : `closed ${event.code} ${event.reason}`.trim();
    scheduleReconnect(conv, why);
  };
}

// Exponential backoff, capped, with jitter (half to all of the step), so a
// restarted server is not met by every client in the same instant.
function scheduleReconnect(conv, why) {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** state.attempt);
  const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  state.attempt += 1;
  setConn("reconnecting", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
  state.reconnectTimer = setTimeout(() => connect(conv), delay);
}

window.addEventListener("online", () => {
  // The network is back: no need to wait out the backoff.
  if (state.conv && state.reconnectTimer) connect(state.conv);
});

function sendFrame(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function setConn(stateName, text) {
  $("conn").dataset.state = stateName;
  $("conn").textContent = text;
}

// ---------- inbound events ----------

function handleEvent(conv, event) {
  if (event.conversation_id && !conv.id) conv.id = event.conversation_id;
  switch (event.type) {
    case "message":
      onMessage(conv, event);
      break;
    case "recovered":
      onRecovered(conv, event);
      break;
    case "ack":
      onAck(conv, event);
      break;
    case "read":
      onRead(conv, event);
      break;
    case "typing":
      if (event.sender_id !== state.me.id) showPeerTyping(event.is_typing === true);
      break;
    case "viewed":
      // A seed client's receipt for one message: the reader saw everything up to it.
      if (event.viewer_id !== state.me.id) {
        const el = conv.byId.get(event.message_id);
        if (el && el.dataset.seq) markSeenUpTo(conv, Number(el.dataset.seq));
      }
      break;
    case "presence":
      if (event.user_id === conv.peer.id) setPresence(event.online === true);
      break;
    case "error":
      onError(conv, event);
      break;
    default:
      break; // new event types are ignored, as the contract asks of clients
  }
}

// Replayed and live messages alike: the server relays a message only once it
// is stored, so every one is final, and showMessage drops what is shown already.
function onMessage(conv, msg) {
  const { el, isNew } = showMessage(conv, msg);
  if (!isNew || el.classList.contains("mine")) return;
  if (conv.ready) showPeerTyping(false); // a message ends its sender's typing
  updateUnread(conv);
  scheduleRead(conv);
  if (conv.ready) scheduleInboxRefresh();
}

function onRecovered(conv, event) {
  conv.id = event.conversation_id;
  if (!event.complete) {
    // Only the newest were replayed: the rows shown before them are no longer
    // contiguous with them. Drop those; "load older" pages them back in.
    for (const el of [...$("messages").children]) {
      const seq = Number(el.dataset.seq || 0);
      if (seq && seq < event.from_seq) {
        conv.byId.delete(el.dataset.id);
        el.remove();
      }
    }
    conv.minSeq = event.from_seq;
  }
  conv.ready = true;
  state.attempt = 0;
  setConn("open", "connected");
  $("chat-error").textContent = "";
  // The replay matched what was stored already (by client_id); the rest is resent.
  for (const [clientId, item] of outbox(conv.key)) {
    sendFrame({ type: "message", text: item.text, client_id: clientId });
  }
  updateLoadOlder(conv);
  updateUnread(conv);
  scheduleRead(conv);
  scheduleInboxRefresh();
}

function onAck(conv, ack) {
  const pending = ack.client_id ? conv.pendingEls.get(ack.client_id) : null;
  if (ack.client_id) outbox(conv.key).delete(ack.client_id);
  if (!pending) {
    // The echo came first (the usual order) and settled the row already.
    const el = conv.byId.get(ack.id);
    if (el) markStored(conv, el);
    return;
  }
  conv.pendingEls.delete(ack.client_id);
  const existing = conv.byId.get(ack.id);
  if (existing) {
    // A resend of a message shown already: keep one row.
    pending.remove();
    markStored(conv, existing);
    return;
  }
  bindRow(conv, pending, ack.id, ack.seq);
  placeRow(pending);
  markStored(conv, pending);
}

function onRead(conv, event) {
  if (event.user_id === state.me.id) {
    // I read it, maybe in another tab: the badge follows.
    conv.myReadSeq = Math.max(conv.myReadSeq, event.last_read_seq);
    updateUnread(conv);
    scheduleInboxRefresh();
  } else {
    markSeenUpTo(conv, event.last_read_seq);
  }
}

function onError(conv, error) {
  const pending = error.client_id ? conv.pendingEls.get(error.client_id) : null;
  if (pending) {
    // A refused message is neither stored nor delivered: resending cannot help.
    conv.pendingEls.delete(error.client_id);
    outbox(conv.key).delete(error.client_id);
    setStatus(pending, "failed", `failed: ${error.code}`);
  }
  $("chat-error").textContent = `${error.code}: ${error.message}`;
}

// ---------- history over REST ----------

function restHeaders() {
  // X-User-Id is ours to send; a custom header makes the browser preflight,
  // which chat-service answers with `*` (no credentials are involved).
  return { Authorization: `Bearer ${state.token}`, "X-User-Id": String(state.me.id) };
}

async function restJson(path) {
  const response = await fetch(`${CHAT_HTTP}${path}`, { headers: restHeaders(), mode: "cors", credentials: "omit" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function loadNewest(conv) {
  try {
    const list = await refreshInbox();
    const entry = (list || []).find(
      (c) => c.lesson_id === conv.lesson.id && c.mentor_id === conv.lesson.teacher.id && c.student_id === conv.studentId,
    );
    if (!entry || state.conv !== conv) return; // nothing said yet: the socket tells the id
    conv.id = entry.id;
    conv.myReadSeq = Math.max(conv.myReadSeq, entry.last_read_seq || 0);
    conv.peerReadSeq = Math.max(conv.peerReadSeq, entry.other_last_read_seq || 0);
    const page = await restJson(`/messages?conversation_id=${encodeURIComponent(conv.id)}&limit=${PAGE_SIZE}`);
    if (state.conv !== conv) return;
    for (const msg of page || []) showMessage(conv, msg);
  } catch (err) {
    // The socket still comes: with since_seq=0 it replays the newest messages.
    $("chat-error").textContent = `history: ${err.message}`;
  }
  updateLoadOlder(conv);
  updateUnread(conv);
}

$("load-older").addEventListener("click", async () => {
  const conv = state.conv;
  if (!conv || !conv.id || conv.minSeq <= 1 || conv.loadingOlder) return;
  conv.loadingOlder = true;
  $("load-older").disabled = true;
  try {
    const page = await restJson(
      `/messages?conversation_id=${encodeURIComponent(conv.id)}&before_seq=${conv.minSeq}&limit=${PAGE_SIZE}`,
    );
    if (state.conv !== conv) return;
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop; // keep what the user looks at in place
    for (const msg of page || []) showMessage(conv, msg);
    if (!page || page.length === 0) conv.minSeq = 1; // nothing older after all
    list.scrollTop = list.scrollHeight - fromBottom;
  } catch (err) {
    $("chat-error").textContent = `history: ${err.message}`;
  } finally {
    conv.loadingOlder = false;
    $("load-older").disabled = false;
    updateLoadOlder(conv);
  }
});

function updateLoadOlder(conv) {
  $("load-older").hidden = !(conv.id && conv.minSeq > 1);
}

// ---------- rendering ----------

// Shows a stored message (REST page, replay or live) once: rows are keyed by
// id, and an own message still "sending…" is matched by its client_id.
function showMessage(conv, msg) {
  const mine = msg.sender_id === state.me.id;
  let el = conv.byId.get(msg.id);
  const isNew = !el;
  if (!el && mine && msg.client_id && conv.pendingEls.has(msg.client_id)) {
    el = conv.pendingEls.get(msg.client_id);
    conv.pendingEls.delete(msg.client_id);
    outbox(conv.key).delete(msg.client_id); // stored: nothing to resend
    setTime(el, msg.created_at);
  }
  if (!el) el = createRow(msg);
  if (!el.dataset.id) {
    bindRow(conv, el, msg.id, msg.seq);
    placeRow(el);
  }
  if (msg.seq) {
    conv.minSeq = conv.minSeq ? Math.min(conv.minSeq, msg.seq) : msg.seq;
    conv.maxSeq = Math.max(conv.maxSeq, msg.seq);
    if (!mine) conv.newestTheirs = Math.max(conv.newestTheirs, msg.seq);
  }
  if (mine) {
    markStored(conv, el);
    // viewed_by: a seed-style receipt on this message.
    if (msg.viewed_by != null && msg.viewed_by !== state.me.id && msg.seq) markSeenUpTo(conv, msg.seq);
  }
  return { el, isNew };
}

function createRow(msg) {
  const mine = msg.sender_id === state.me.id;
  const el = document.createElement("li");
  el.className = mine ? "msg mine" : "msg theirs";
  el.dataset.sender = String(msg.sender_id);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = msg.text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.append(document.createElement("time"));
  if (mine) {
    const st = document.createElement("span");
    st.className = "status";
    meta.append(" ", st);
  }
  el.append(text, meta);
  setTime(el, msg.created_at);
  return el;
}

function renderPending(conv, clientId, item) {
  const el = createRow({ sender_id: state.me.id, text: item.text, created_at: item.createdAt });
  el.dataset.clientId = clientId;
  setStatus(el, "sending");
  conv.pendingEls.set(clientId, el);
  placeRow(el);
  return el;
}

function setTime(el, createdAt) {
  el.querySelector("time").textContent = createdAt ? new Date(createdAt).toLocaleTimeString() : "";
}

function bindRow(conv, el, id, seq) {
  el.dataset.id = id;
  if (seq) el.dataset.seq = String(seq);
  conv.byId.set(id, el);
}

// Rows are ordered by seq; rows still sending (no seq yet) stay at the bottom.
// The search runs from the bottom, where new rows almost always go.
function placeRow(el) {
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const seq = Number(el.dataset.seq || 0);
  let before = null;
  if (seq) {
    let after = null;
    for (let other = list.lastElementChild; other; other = other.previousElementSibling) {
      const s = Number(other.dataset.seq || 0);
      if (other !== el && s && s < seq) {
        after = other;
        break;
      }
    }
    before = after ? after.nextElementSibling : list.firstElementChild;
    // Skip rows still sending that sit between (they belong at the bottom).
    if (before === el) before = el.nextElementSibling;
  }
  if (before !== el) list.insertBefore(el, before);
  if (atBottom || !seq) list.scrollTop = list.scrollHeight;
}

// "sent": the server confirmed it stored the message (echo or ack).
function markStored(conv, el) {
  el.dataset.acked = "true";
  const seq = Number(el.dataset.seq || 0);
  if (seq && seq <= conv.peerReadSeq) setStatus(el, "seen");
  else if (el.dataset.status !== "seen") setStatus(el, "sent");
}

function markSeenUpTo(conv, seq) {
  conv.peerReadSeq = Math.max(conv.peerReadSeq, seq);
  for (const el of $("messages").querySelectorAll(".msg.mine[data-seq]")) {
    if (Number(el.dataset.seq) <= conv.peerReadSeq) setStatus(el, "seen");
  }
}

// data-status is the latest state; data-trail keeps every state it went through.
function setStatus(el, status, label) {
  if (el.dataset.status !== status) el.dataset.trail = `${el.dataset.trail || ""} ${status}`.trim();
  el.dataset.status = status;
  const st = el.querySelector(".status");
  if (st) st.textContent = label || { sending: "sending…", sent: "✓ sent", seen: "✓✓ seen" }[status] || status;
}

function setPresence(online) {
  $("presence").dataset.online = String(online);
  $("presence").textContent = online ? "online" : "offline";
}

function showPeerTyping(typing) {
  clearTimeout(state.peerTypingTimer);
  $("typing").hidden = !typing;
  $("typing").textContent = typing && state.conv ? `${state.conv.peer.username} is typing…` : "";
  if (typing) state.peerTypingTimer = setTimeout(() => showPeerTyping(false), TYPING_SHOWN_MS);
}

// Unread in the open conversation: the other's messages after my cursor.
function unreadCount(conv) {
  let n = 0;
  for (const el of $("messages").querySelectorAll(".msg.theirs[data-seq]")) {
    if (Number(el.dataset.seq) > conv.myReadSeq) n += 1;
  }
  return n;
}

function updateUnread(conv) {
  if (state.conv !== conv) return;
  const n = unreadCount(conv);
  $("unread").hidden = n === 0;
  $("unread").textContent = String(n);
  document.title = n ? `(${n}) chat-service demo` : "chat-service demo";
  const li = $("inbox").querySelector(`li[data-key="${conv.key}"]`);
  if (li) setBadge(li, n);
}

// ---------- read state ----------

// The conversation is open; while the page is visible, the newest message
// shown from the other participant is read (debounced: a burst is one frame).
function scheduleRead(conv) {
  if (state.conv !== conv || document.visibilityState !== "visible") return;
  clearTimeout(conv.readTimer);
  conv.readTimer = setTimeout(() => sendRead(conv), READ_DEBOUNCE_MS);
}

function sendRead(conv) {
  if (state.conv !== conv || !conv.ready || document.visibilityState !== "visible") return;
  const seq = conv.newestTheirs;
  if (seq <= conv.myReadSeq) return;
  if (!sendFrame({ type: "read", seq })) return;
  conv.myReadSeq = seq; // a cursor only moves forward; the server's echo confirms it
  updateUnread(conv);
  scheduleInboxRefresh();
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible") return;
  if (state.conv) scheduleRead(state.conv);
  if (state.token) scheduleInboxRefresh();
});

// ---------- inbox ----------

// GET /conversations with the read state: unread badges, "seen" ticks and,
// for the mentor, the longest-waiting student first.
async function refreshInbox() {
  if (!state.token) return state.inbox;
  const request = ++state.inboxRequest;
  const sort = state.me.is_mentor ? "waiting" : "recent";
  try {
    const list = (await restJson(`/conversations?sort=${sort}`)) || [];
    if (request === state.inboxRequest) {
      state.inbox = list;
      renderInbox();
    }
    return list;
  } catch (err) {
    $("inbox-empty").hidden = false;
    $("inbox-empty").textContent = `inbox: ${err.message}`;
    throw err;
  }
}

function scheduleInboxRefresh() {
  clearTimeout(state.inboxRefreshTimer);
  state.inboxRefreshTimer = setTimeout(() => refreshInbox().catch(() => {}), 300);
}

function renderInbox() {
  const items = state.inbox.map((c) => {
    const lesson = state.me.lessons.find((l) => l.id === c.lesson_id);
    const peerId = state.me.is_mentor ? c.student_id : c.mentor_id;
    const peer = lesson && (state.me.is_mentor ? lesson.students.find((s) => s.id === peerId) : lesson.teacher);
    const li = document.createElement("li");
    li.dataset.conversationId = c.id;
    li.dataset.key = convKey(c.lesson_id, c.student_id);
    li.dataset.peer = peer ? peer.username : String(peerId);
    const open = state.conv && state.conv.key === li.dataset.key ? state.conv : null;
    if (open) li.classList.add("active");
    const button = document.createElement("button");
    button.type = "button";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${peer ? peer.username : `user ${peerId}`} · ${lesson ? lesson.title : `lesson ${c.lesson_id}`}`;
    const badge = document.createElement("span");
    badge.className = "badge";
    const last = document.createElement("span");
    last.className = "last";
    const m = c.last_message;
    if (m) {
      const mine = m.sender_id === state.me.id;
      const seen = mine && (c.other_last_read_seq || 0) >= m.seq;
      last.textContent = `${mine ? (seen ? "✓✓ " : "✓ ") : ""}${m.text}`;
      if (mine) li.dataset.seen = String(seen);
    } else {
      last.textContent = "no messages yet";
    }
    button.append(who, badge, last);
    if (state.me.is_mentor && c.waiting_since) {
      const waiting = document.createElement("span");
      waiting.className = "waiting";
      waiting.textContent = `waiting ${ago(c.waiting_since)}`;
      li.dataset.waiting = "true";
      button.append(waiting);
    }
    li.append(button);
    // The open conversation's count is the page's own (live, and read as shown).
    setBadge(li, open && open.ready ? unreadCount(open) : c.unread_count || 0);
    button.addEventListener("click", () => {
      if (lesson && !(state.conv && state.conv.key === li.dataset.key)) openConversation(lesson, c.student_id);
    });
    return li;
  });
  $("inbox").replaceChildren(...items);
  $("inbox-empty").hidden = items.length > 0;
  $("inbox-empty").textContent = "No conversations yet.";
}

function setBadge(li, n) {
  li.dataset.unread = String(n);
  li.querySelector(".badge").textContent = String(n);
}

function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

// ---------- outbound: send, typing ----------

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const conv = state.conv;
  const text = $("text").value;
  if (!conv || !text.trim()) return;
  $("text").value = "";
  stopTyping();
  const clientId = newClientId();
  const item = { text, createdAt: new Date().toISOString() };
  outbox(conv.key).set(clientId, item);
  renderPending(conv, clientId, item);
  // While (re)connecting it waits: the resend after "recovered" takes it.
  if (conv.ready) sendFrame({ type: "message", text, client_id: clientId });
});

$("text").addEventListener("input", () => {
  if ($("text").value === "") {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (now - state.typingSentAt >= TYPING_REPEAT_MS && state.conv && state.conv.ready) {
    if (sendFrame({ type: "typing", is_typing: true })) state.typingSentAt = now;
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
});

$("text").addEventListener("blur", () => stopTyping());

function stopTyping() {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt) {
    sendFrame({ type: "typing", is_typing: false });
    state.typingSentAt = 0;
  }
}

// ---------- test hook (scripts/e2e/browser) ----------

// Drops the socket the way a lost network shows up to the page: the page's
// own reconnect then runs, as it would for a user.
window.__chat = Object.freeze({
  dropSocket() {
    if (state.ws) state.ws.close(4000, "dropped by the test hook");
  },
  conversation() {
    const c = state.conv;
    return c && { id: c.id, minSeq: c.minSeq, maxSeq: c.maxSeq, myReadSeq: c.myReadSeq, peerReadSeq: c.peerReadSeq };
  },
});
