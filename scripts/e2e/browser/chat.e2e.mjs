// Browser end-to-end test: the demo page in Debian's chromium, driven by
// playwright-core, as the mentor and as students in separate browser
// contexts, against the real Django and the real chat-service started by
// run.sh: typing, sent/seen, resend, recovery after a lost network (also past
// CHAT_RECOVERY_MAX, with "load older"), history paging, unread badges and
// read cursors across tabs, the mentor's inbox by waiting time.
//
// Env: E2E_DJANGO_URL, E2E_DEMO_JSON, E2E_ARTIFACTS_DIR, CHROMIUM_BIN (default
// /usr/bin/chromium), E2E_RECOVERY_MAX (the service's CHAT_RECOVERY_MAX; the
// past-the-cap step runs only when it is set).
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const DJANGO = requireEnv("E2E_DJANGO_URL").replace(/\/+$/, "");
const DEMO = JSON.parse(fs.readFileSync(requireEnv("E2E_DEMO_JSON"), "utf8"));
const ARTIFACTS = requireEnv("E2E_ARTIFACTS_DIR");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 15_000; // a bound per wait, not a speed assertion
const WHOLE_TEST_MS = 170_000;

// Without the background-networking flags chromium keeps dialling Google's
// hosts, which this closed network refuses. Playwright gives every launch a
// fresh, empty --user-data-dir of its own (a temp dir it deletes on close).
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set: run this through scripts/e2e/run.sh`);
    process.exit(2);
  }
  return value;
}

function step(text) {
  console.log(`browser: ${text}`);
}

async function login(browser, username) {
  const context = await browser.newContext({ viewport: { width: 900, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`${username}: page error: ${err.message}`));
  page.on("console", (msg) => {
    // Refused connections while the test takes the network away are expected.
    if (msg.type() === "error" && !/WebSocket|ERR_CONNECTION|ERR_INTERNET_DISCONNECTED/.test(msg.text())) {
      problems.push(`${username}: console error: ${msg.text()} (${msg.location().url})`);
    }
  });
  await page.goto(`${DJANGO}/`);
  await page.fill("#username", username);
  await page.fill("#password", DEMO.users[username].password);
  await page.click("#login");
  await page.waitForSelector("#pick-form:not([hidden])");
  return { page, problems };
}

async function openChat(browser, username, studentId) {
  const opened = await login(browser, username);
  const { page } = opened;
  await page.selectOption("#lesson", String(DEMO.lesson_id));
  if (studentId !== undefined) await page.selectOption("#student", String(studentId));
  await page.click("#open-chat");
  await page.waitForSelector('#conn[data-state="open"]');
  return opened;
}

// A message row of this page, found by its text.
function row(page, text) {
  return page.locator("#messages li", { hasText: text });
}

// A conversation of this page's inbox, found by the other participant's name.
function inboxEntry(page, peer) {
  return page.locator(`#inbox li[data-peer="${peer}"]`);
}

// Polls the attribute through the locator, so an element re-rendered
// meanwhile (the inbox is) is found again; a locator matching two elements
// fails (strict mode), which catches a row shown twice.
async function waitAttr(locator, name, ok, wanted) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let value;
  for (;;) {
    value = await locator.getAttribute(name);
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`${locator}: ${name} is ${value}, expected ${wanted}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function expectAttr(locator, name, value) {
  return waitAttr(locator, name, (v) => v === value, value);
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// The rows of a page as {id, seq, text}, top to bottom; checks they are
// ordered by seq, with no id twice.
async function rows(page) {
  const list = await page.$$eval("#messages li", (els) =>
    els.map((el) => ({ id: el.dataset.id, seq: Number(el.dataset.seq || 0), text: el.querySelector(".text").textContent })),
  );
  const ids = new Set();
  let last = 0;
  for (const r of list) {
    if (!r.id) continue;
    if (ids.has(r.id)) throw new Error(`message ${r.id} shown twice`);
    ids.add(r.id);
    if (r.seq <= last) throw new Error(`rows out of seq order: ${r.seq} after ${last}`);
    last = r.seq;
  }
  return list;
}

// Exactly these texts, once each, in this order, among the rows.
async function expectOnceInOrder(page, texts) {
  const shown = (await rows(page)).map((r) => r.text).filter((t) => texts.includes(t));
  if (JSON.stringify(shown) !== JSON.stringify(texts)) {
    throw new Error(`expected ${JSON.stringify(texts)} once each in order, page shows ${JSON.stringify(shown)}`);
  }
}

// The network goes away: open sockets are dropped (the page notices as it
// would a dead connection) and every reconnect attempt fails until online.
// setOffline alone leaves an open WebSocket untouched in Chromium, hence the hook.
async function goOffline(page) {
  await page.context().setOffline(true);
  await page.evaluate(() => window.__chat.dropSocket());
  await page.waitForSelector('#conn[data-state="reconnecting"]');
}

async function sideBySide(browser, shots, file) {
  const page = await browser.newPage({ viewport: { width: 1300, height: 800 } });
  const imgs = shots
    .map(
      ({ label, png }) =>
        `<figure><figcaption>${label}</figcaption><img src="data:image/png;base64,${png.toString("base64")}"></figure>`,
    )
    .join("");
  await page.setContent(
    `<body style="margin:0;display:flex;gap:12px;padding:8px;background:#ccd;font:14px sans-serif">${imgs}</body>`,
  );
  await page.screenshot({ path: file, fullPage: true });
  await page.close();
}

async function scenario(browser, opened) {
  const aliceId = DEMO.users.alice.id;
  const mentor = await openChat(browser, "mentor", aliceId);
  opened.push({ label: "mentor", ...mentor });
  step("mentor logged in and connected");
  const alice = await openChat(browser, "alice");
  opened.push({ label: "alice (student)", ...alice });
  step("alice logged in and connected");

  await mentor.page.waitForSelector('#presence[data-online="true"]');
  await alice.page.waitForSelector('#presence[data-online="true"]');
  step("presence: both see the other online");

  // Typing shows, and hides when the typer stops (leaves the field).
  await alice.page.locator("#text").pressSequentially("Just a sec", { delay: 20 });
  await mentor.page.waitForSelector("#typing:not([hidden])");
  const typingText = await mentor.page.textContent("#typing");
  if (!typingText.includes("alice is typing")) throw new Error(`typing indicator says ${typingText}`);
  await alice.page.locator("#text").blur();
  await mentor.page.locator("#typing").waitFor({ state: "hidden" });
  await alice.page.fill("#text", "");
  step("typing indicator shown to the mentor, and hidden when alice left the field");

  const question = `Hello mentor, a question about lifetimes ${Date.now()}`;
  await alice.page.locator("#text").pressSequentially(question.slice(0, 12), { delay: 20 });
  await mentor.page.waitForSelector("#typing:not([hidden])");
  await alice.page.fill("#text", question);
  await alice.page.press("#text", "Enter");
  await row(mentor.page, question).waitFor();
  step("mentor received alice's message");
  await expectAttr(row(alice.page, question), "data-status", "seen");
  await expectAttr(row(alice.page, question), "data-acked", "true");
  const trail = await row(alice.page, question).getAttribute("data-trail");
  if (trail !== "sending sent seen") throw new Error(`alice's message went ${trail}`);
  step(`alice's message: ${trail.replaceAll(" ", " → ")} (read receipt shown)`);
  await mentor.page.locator("#typing").waitFor({ state: "hidden" }); // the message ended the typing

  const answer = `Hi alice! Think of a borrow as a loan ${Date.now()}`;
  await mentor.page.fill("#text", answer);
  await mentor.page.click("#send");
  await row(alice.page, answer).waitFor();
  await expectAttr(row(mentor.page, answer), "data-status", "seen");
  step("alice received the answer; mentor sees it read");

  // The socket drops and a message is written before the page reconnects:
  // it is kept ("sending…"), resent with its client_id once reconnected, and
  // delivered once.
  const offline = `written while the socket was down ${Date.now()}`;
  await alice.page.evaluate((text) => {
    window.__chat.dropSocket();
    document.getElementById("text").value = text;
    document.getElementById("send-form").requestSubmit();
  }, offline);
  await expectAttr(row(alice.page, offline), "data-acked", "true");
  await row(mentor.page, offline).waitFor();
  const offlineTrail = await row(alice.page, offline).getAttribute("data-trail");
  if (!offlineTrail.startsWith("sending sent")) throw new Error(`offline message went ${offlineTrail}`);
  await alice.page.waitForSelector('#conn[data-state="open"]');
  const thanks = `thanks! ${Date.now()}`;
  await send(alice.page, thanks);
  await row(mentor.page, thanks).waitFor();
  // alice's later message has arrived, so a duplicate sent before it would be here too.
  await expectOnceInOrder(mentor.page, [offline, thanks]);
  step("alice reconnected by herself; the message queued meanwhile was resent, stored and shown once");

  // Messages sent while alice is away are recovered on her reconnect
  // (since_seq), each once, in order.
  await goOffline(alice.page);
  const missed = [1, 2, 3].map((i) => `missed while offline #${i} ${Date.now()}`);
  for (const text of missed) {
    await send(mentor.page, text);
    await expectAttr(row(mentor.page, text), "data-acked", "true");
  }
  const early = await row(alice.page, "missed while offline #").count();
  if (early !== 0) throw new Error(`alice shows ${early} of the missed messages while offline`);
  await alice.page.context().setOffline(false);
  await alice.page.waitForSelector('#conn[data-state="open"]');
  await row(alice.page, missed[2]).waitFor();
  await expectOnceInOrder(alice.page, missed);
  step("alice's page reconnected by itself and recovered the 3 missed messages, once each, in order");

  // More missed than the service replays (CHAT_RECOVERY_MAX, set by run.sh):
  // the newest are replayed, the rest come with "load older".
  const recoveryMax = Number(process.env.E2E_RECOVERY_MAX || 0);
  if (recoveryMax) {
    await goOffline(alice.page);
    const many = Array.from({ length: recoveryMax + 40 }, (_, i) => `burst ${i + 1} ${Date.now()}`);
    await mentor.page.evaluate((texts) => {
      for (const text of texts) {
        document.getElementById("text").value = text;
        document.getElementById("send-form").requestSubmit();
      }
    }, many);
    await expectAttr(row(mentor.page, many[many.length - 1]), "data-acked", "true");
    await alice.page.context().setOffline(false);
    await alice.page.waitForSelector('#conn[data-state="open"]');
    await row(alice.page, many[many.length - 1]).waitFor();
    await alice.page.waitForSelector("#load-older:not([hidden])");
    const replayed = (await rows(alice.page)).filter((r) => r.text.startsWith("burst ")).length;
    if (replayed !== recoveryMax) throw new Error(`replayed ${replayed} of the burst, expected ${recoveryMax}`);
    await alice.page.click("#load-older");
    await row(alice.page, many[0]).waitFor();
    await expectOnceInOrder(alice.page, many);
    step(`${many.length} missed: the newest ${recoveryMax} replayed, the older ones paged in with "load older"`);
  }

  // History over REST: a fresh page for alice shows the newest page, pages
  // older ones in, and shows read receipts from the store.
  const again = await openChat(browser, "alice");
  await again.page.locator("#messages li").first().waitFor();
  let pages = 1;
  for (; pages < 20 && !(await again.page.locator("#load-older").isHidden()); pages++) {
    const before = (await rows(again.page)).length;
    await again.page.click("#load-older");
    await again.page.waitForFunction((n) => document.querySelectorAll("#messages li").length > n, before);
  }
  const all = await rows(again.page);
  if (all[0].seq !== 1 || all[all.length - 1].seq !== all.length) {
    throw new Error(`history is not seqs 1..${all.length}: ${all[0].seq}..${all[all.length - 1].seq}`);
  }
  await expectOnceInOrder(again.page, [question, answer, offline, thanks, ...missed]);
  await expectAttr(row(again.page, question), "data-status", "seen");
  await again.page.context().close();
  step(`a reloaded page shows the history (${all.length} messages in ${pages} page(s)) with read receipts`);
  opened.push({ label: "", page: null, problems: again.problems });

  await readState(browser, opened, mentor, alice);

  // Leave the mentor typing, so the screenshot shows the indicator too.
  await mentor.page.locator("#text").pressSequentially("One more thing", { delay: 20 });
  const typingPage = opened.find((o) => o.label === "alice (student)").page;
  await typingPage.waitForSelector("#typing:not([hidden])");

  const problems = opened.flatMap((o) => o.problems);
  if (problems.length) throw new Error(problems.join("\n"));
}

// Read state (CONTRACT §6): unread badges in the mentor's inbox, cleared by
// opening the conversation or by reading it in another tab; "seen" ticks
// from the other participant's cursor; the inbox sorted by waiting time.
async function readState(browser, opened, mentor, alice) {
  const bob = await openChat(browser, "bob");
  opened.push({ label: "bob (student)", ...bob });
  const bobEntry = inboxEntry(mentor.page, "bob");
  await bobEntry.waitFor();
  const before = Number(await bobEntry.getAttribute("data-unread"));
  const fromBob = [`bob here ${Date.now()}`, `bob again ${Date.now()}`];
  for (const text of fromBob) await send(bob.page, text);
  await expectAttr(row(bob.page, fromBob[1]), "data-acked", "true");
  await expectAttr(bobEntry, "data-unread", String(before + 2));
  await expectAttr(bobEntry, "data-waiting", "true");
  const waitingText = await bobEntry.locator(".waiting").textContent();
  if (!/^waiting \d+ s$/.test(waitingText)) throw new Error(`bob's entry says ${waitingText}`);
  step(`mentor's inbox: bob's conversation shows ${before + 2} unread, "${waitingText}"`);

  // The inbox is sorted by waiting time: the waiting ones first, oldest first.
  const order = await mentor.page.$$eval("#inbox li", (els) => els.map((el) => el.dataset.waiting === "true"));
  if (order.indexOf(false) !== -1 && order.lastIndexOf(true) > order.indexOf(false)) {
    throw new Error(`inbox order: waiting flags ${JSON.stringify(order)}`);
  }

  // Opening it reads it: the badge clears, and bob sees his messages seen.
  await bobEntry.locator("button").click();
  await row(mentor.page, fromBob[1]).waitFor();
  await expectAttr(bobEntry, "data-unread", "0");
  await expectAttr(row(bob.page, fromBob[0]), "data-status", "seen");
  await expectAttr(row(bob.page, fromBob[1]), "data-status", "seen");
  step("mentor opened bob's conversation: the badge cleared, bob sees ✓✓ seen");

  // Read in another tab: alice writes while the mentor's first tab shows bob;
  // a second mentor tab opens alice's conversation; the first tab's badge clears.
  const ping = `ping from alice ${Date.now()}`;
  await send(alice.page, ping);
  const aliceEntry = inboxEntry(mentor.page, "alice");
  await waitAttr(aliceEntry, "data-unread", (v) => Number(v) >= 1, "at least 1");
  const second = await openChat(browser, "mentor", DEMO.users.alice.id);
  await row(second.page, ping).waitFor();
  await expectAttr(aliceEntry, "data-unread", "0");
  await expectAttr(row(alice.page, ping), "data-status", "seen");
  step("a second mentor tab read alice's conversation: the first tab's badge cleared");

  // The open conversation in a hidden tab: a new message stays unread there
  // (badge in the chat header) until the other tab reads it (a live "read").
  await mentor.page.evaluate(() => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  const late = `bob, one more ${Date.now()}`;
  await send(bob.page, late);
  await row(mentor.page, late).waitFor();
  await mentor.page.waitForSelector("#unread:not([hidden])");
  const headerBadge = await mentor.page.textContent("#unread");
  if (headerBadge !== "1") throw new Error(`hidden tab's badge says ${headerBadge}`);
  await second.page.locator(`#inbox li[data-peer="bob"] button`).click();
  await row(second.page, late).waitFor();
  await mentor.page.locator("#unread").waitFor({ state: "hidden" });
  await expectAttr(row(bob.page, late), "data-status", "seen");
  await mentor.page.evaluate(() => {
    delete document.visibilityState;
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await second.page.context().close();
  opened.push({ label: "", page: null, problems: second.problems });
  step("a hidden tab kept its badge until the other tab read the conversation");

  // Seen ticks from the store: a fresh page for bob shows his messages seen
  // (other_last_read_seq), and his inbox entry shows the tick too.
  const bobAgain = await openChat(browser, "bob");
  for (const text of [...fromBob, late]) await expectAttr(row(bobAgain.page, text), "data-status", "seen");
  await expectAttr(inboxEntry(bobAgain.page, "mentor"), "data-seen", "true");
  await bobAgain.page.context().close();
  opened.push({ label: "", page: null, problems: bobAgain.problems });
  step("a reloaded page shows bob's messages seen, from the read cursor");

  // Back to alice, for the screenshot.
  await inboxEntry(mentor.page, "alice").locator("button").click();
  await mentor.page.waitForSelector('#conn[data-state="open"]');
}

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const watchdog = setTimeout(() => {
    console.error(`browser: gave up after ${WHOLE_TEST_MS / 1000} s`);
    console.log("browser: 0 passed, 1 failed");
    process.exit(1);
  }, WHOLE_TEST_MS);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const opened = [];
  let failure = null;
  try {
    await scenario(browser, opened);
  } catch (err) {
    failure = err;
  }
  const shots = [];
  for (const { label, page } of opened) {
    if (page && !page.isClosed()) shots.push({ label, png: await page.screenshot() });
  }
  const file = path.join(ARTIFACTS, failure ? "e2e-chat-failure.png" : "e2e-chat.png");
  if (shots.length) {
    await sideBySide(browser, shots, file);
    console.log(`browser: screenshot ${file}`);
  }
  await browser.close();
  clearTimeout(watchdog);
  if (failure) {
    console.error(`browser: FAILED: ${failure.stack || failure}`);
    console.log("browser: 0 passed, 1 failed");
    process.exit(1);
  }
  console.log("browser: 1 passed, 0 failed");
}

main().catch((err) => {
  console.error(`browser: FAILED: ${err.stack || err}`);
  console.log("browser: 0 passed, 1 failed");
  process.exit(1);
});
