// The demo web client: talks to chat-service exactly as a platform frontend
// would (CONTRACT §3 WebSocket, §4 REST). Plain JS, no build step.
"use strict";

const CHAT_HTTP = JSON.parse(document.getElementById("chat-service-url").textContent).replace(/\/+$/, "");
const CHAT_WS = CHAT_HTTP.replace(/^http/, "ws") + "/ws";
const DEMO_PASSWORDS = { mentor: "mentor-pass", alice: "alice-pass", bob: "bob-pass" };
const TYPING_IDLE_MS = 3000; // after this long without a keystroke we send is_typing:false
const TYPING_REPEAT_MS = 2500; // a held "typing" state is re-announced this often
const TYPING_SHOWN_MS = 6000; // the peer's indicator hides itself if no "false" arrives
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  me: null, // {id, username, is_mentor, lessons}
  lesson: null,
  studentId: null,
  peer: null, // {id, username}
  conversationId: null,
  ws: null,
  wantOpen: false, // false after logout: no reconnect
  reconnectDelay: RECONNECT_MIN_MS,
  reconnectTimer: null,
  pending: new Map(), // client_id -> {text, el}: un-acked, resent after a reconnect
  byId: new Map(), // message id -> element
  viewedSent: new Set(), // message ids we already reported as viewed
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
  showPicker();
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
  state.lesson = lesson;
  if (state.me.is_mentor) {
    state.studentId = Number($("student").value);
    state.peer = lesson.students.find((s) => s.id === state.studentId);
  } else {
    state.studentId = state.me.id;
    state.peer = lesson.teacher;
  }
  $("pick-form").hidden = true;
  $("chat").hidden = false;
  $("peer-name").textContent = `${lesson.title} — with ${state.peer.username}`;
  state.wantOpen = true;
  connect();
});

$("logout").addEventListener("click", () => {
  state.wantOpen = false;
  clearTimeout(state.reconnectTimer);
  if (state.ws) state.ws.close(1000, "logout");
  location.reload();
});

// ---------- WebSocket life: connect, reconnect, resend ----------

function connect() {
  const params = new URLSearchParams({
    token: state.token,
    user_id: String(state.me.id),
    lesson_id: String(state.lesson.id),
  });
  if (state.me.is_mentor) params.set("student_id", String(state.studentId));
  setConn("connecting", "connecting…");
  const ws = new WebSocket(`${CHAT_WS}?${params}`);
  state.ws = ws;
  ws.onopen = () => {
    state.reconnectDelay = RECONNECT_MIN_MS;
    setConn("open", "connected");
    $("chat-error").textContent = "";
    // Resend everything not acknowledged, under its original client_id: the
    // server neither stores nor delivers a duplicate, and acks with the first id.
    for (const [clientId, item] of state.pending) {
      sendFrame({ type: "message", text: item.text, client_id: clientId });
      setStatus(item.el, "sent");
    }
    loadHistory();
  };
  ws.onmessage = (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    handleEvent(data);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    setPresence(false);
    showPeerTyping(false);
    if (!state.wantOpen) {
      setConn("closed", "disconnected");
      return;
    }
    // The browser hides a refused upgrade's HTTP status (it shows 1006); say so.
    const why = event.code === 1006 ? "connection lost or refused" : `closed ${event.code} ${event.reason}`.trim();
    const delay = state.reconnectDelay;
    state.reconnectDelay = Math.min(delay * 2, RECONNECT_MAX_MS);
    setConn("reconnecting", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

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

function handleEvent(event) {
  if (event.conversation_id && !state.conversationId) state.conversationId = event.conversation_id;
  switch (event.type) {
    case "message":
      onMessage(event);
      break;
    case "ack":
      onAck(event);
      break;
    case "typing":
      if (event.sender_id !== state.me.id) showPeerTyping(event.is_typing === true);
      break;
    case "viewed":
      if (event.viewer_id !== state.me.id) {
        const el = state.byId.get(event.message_id);
        if (el && el.classList.contains("mine")) setStatus(el, "seen");
      }
      break;
    case "presence":
      if (state.peer && event.user_id === state.peer.id) setPresence(event.online === true);
      break;
    case "error":
      onError(event);
      break;
    default:
      break; // new event types are ignored, as the contract asks of clients
  }
}

function onMessage(msg) {
  const mine = msg.sender_id === state.me.id;
  if (mine && msg.client_id && state.pending.has(msg.client_id)) {
    // Our own message coming back: it now has its server id.
    bindId(state.pending.get(msg.client_id).el, msg.id);
    return;
  }
  if (msg.id && state.byId.has(msg.id)) return;
  if (!mine) showPeerTyping(false); // a message ends its sender's typing
  const el = renderMessage(msg, mine ? "sent" : null);
  if (!mine) markViewed(msg);
  return el;
}

function onAck(ack) {
  const item = ack.client_id ? state.pending.get(ack.client_id) : null;
  if (!item) {
    const el = state.byId.get(ack.id);
    if (el) markAcked(el);
    return;
  }
  state.pending.delete(ack.client_id);
  const existing = state.byId.get(ack.id);
  if (existing && existing !== item.el) {
    // A resend of a message history already showed: keep one copy.
    item.el.remove();
    markAcked(existing);
    return;
  }
  bindId(item.el, ack.id);
  markAcked(item.el);
}

function markAcked(el) {
  if (el.dataset.status === "seen") el.dataset.acked = "true";
  else setStatus(el, "acked");
}

function onError(error) {
  const item = error.client_id ? state.pending.get(error.client_id) : null;
  if (item) {
    // A refused message is neither stored nor delivered: resending cannot help.
    state.pending.delete(error.client_id);
    setStatus(item.el, "failed", `failed: ${error.code}`);
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

async function findConversationId() {
  if (state.conversationId) return state.conversationId;
  const conversations = await restJson("/conversations");
  const mentorId = state.lesson.teacher.id;
  const match = (conversations || []).find(
    (c) => c.lesson_id === state.lesson.id && c.mentor_id === mentorId && c.student_id === state.studentId,
  );
  if (match && !state.conversationId) state.conversationId = match.id;
  return state.conversationId;
}

async function loadHistory() {
  try {
    const conversationId = await findConversationId();
    if (!conversationId) return; // nothing said yet; the first event will tell us the id
    const messages = await restJson(`/messages?conversation_id=${encodeURIComponent(conversationId)}`);
    for (const msg of messages || []) {
      const mine = msg.sender_id === state.me.id;
      let el = state.byId.get(msg.id);
      if (!el) el = renderMessage(msg, mine ? "acked" : null);
      if (mine && msg.viewed_by != null && msg.viewed_by !== state.me.id) setStatus(el, "seen");
      if (!mine && msg.viewed_by == null) markViewed(msg);
    }
  } catch (err) {
    $("chat-error").textContent = `history: ${err.message}`;
  }
}

// ---------- rendering ----------

function renderMessage(msg, status) {
  const mine = msg.sender_id === state.me.id;
  const el = document.createElement("li");
  el.className = mine ? "msg mine" : "msg theirs";
  el.dataset.sender = String(msg.sender_id);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = msg.text;
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  time.textContent = msg.created_at ? new Date(msg.created_at).toLocaleTimeString() : "";
  meta.append(time);
  if (mine) {
    const st = document.createElement("span");
    st.className = "status";
    meta.append(" ", st);
  }
  el.append(text, meta);
  if (status) setStatus(el, status);
  if (msg.id) bindId(el, msg.id);
  insertInOrder(el, msg.id);
  return el;
}

// Ids are ObjectIds (time first), so string order is send order; un-acked
// messages without an id stay at the bottom.
function insertInOrder(el, id) {
  const list = $("messages");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  let before = null;
  if (id) {
    for (const other of list.children) {
      if (!other.dataset.id || other.dataset.id > id) {
        before = other;
        break;
      }
    }
  }
  list.insertBefore(el, before);
  if (atBottom || !id) list.scrollTop = list.scrollHeight;
}

function bindId(el, id) {
  if (!id) return;
  el.dataset.id = id;
  state.byId.set(id, el);
}

// data-status is the latest state; data-trail keeps every state it went
// through and data-acked records the ack, even if "seen" overtook it.
function setStatus(el, status, label) {
  if (status === "acked") el.dataset.acked = "true";
  if (el.dataset.status !== status) el.dataset.trail = `${el.dataset.trail || ""} ${status}`.trim();
  el.dataset.status = status;
  const st = el.querySelector(".status");
  if (st) st.textContent = label || { sending: "sending…", sent: "sent", acked: "✓ acked", seen: "✓✓ seen" }[status] || status;
}

function setPresence(online) {
  $("presence").dataset.online = String(online);
  $("presence").textContent = online ? "online" : "offline";
}

function showPeerTyping(typing) {
  clearTimeout(state.peerTypingTimer);
  $("typing").hidden = !typing;
  $("typing").textContent = typing ? `${state.peer.username} is typing…` : "";
  if (typing) state.peerTypingTimer = setTimeout(() => showPeerTyping(false), TYPING_SHOWN_MS);
}

// ---------- outbound: send, typing, viewed ----------

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("text").value = "";
  stopTyping();
  const clientId = newClientId();
  const el = renderMessage({ sender_id: state.me.id, text, created_at: new Date().toISOString() }, "sending");
  el.dataset.clientId = clientId;
  state.pending.set(clientId, { text, el });
  if (sendFrame({ type: "message", text, client_id: clientId })) setStatus(el, "sent");
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if ($("text").value === "") {
    stopTyping();
    return;
  }
  if (now - state.typingSentAt > TYPING_REPEAT_MS) {
    if (sendFrame({ type: "typing", is_typing: true })) state.typingSentAt = now;
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
});

function stopTyping() {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt) {
    sendFrame({ type: "typing", is_typing: false });
    state.typingSentAt = 0;
  }
}

// A message counts as read when it was shown while the page was visible.
function markViewed(msg) {
  if (!msg.id || state.viewedSent.has(msg.id) || document.visibilityState !== "visible") return;
  if (sendFrame({ type: "viewed", message_id: msg.id })) state.viewedSent.add(msg.id);
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible") return;
  for (const el of $("messages").querySelectorAll(".msg.theirs")) {
    markViewed({ id: el.dataset.id });
  }
});
