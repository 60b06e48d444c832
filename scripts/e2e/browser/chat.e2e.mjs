// Browser end-to-end test: the demo page in Debian's chromium, driven by
// playwright-core, as the mentor and as a student in two browser contexts,
// against the real Django and the real chat-service started by run.sh.
//
// Env: E2E_DJANGO_URL, E2E_DEMO_JSON, E2E_ARTIFACTS_DIR, CHROMIUM_BIN (default /usr/bin/chromium).
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const DJANGO = requireEnv("E2E_DJANGO_URL").replace(/\/+$/, "");
const DEMO = JSON.parse(fs.readFileSync(requireEnv("E2E_DEMO_JSON"), "utf8"));
const ARTIFACTS = requireEnv("E2E_ARTIFACTS_DIR");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 15_000; // a bound per wait, not a speed assertion
const WHOLE_TEST_MS = 150_000;

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

async function openChat(browser, username, studentId) {
  const context = await browser.newContext({ viewport: { width: 640, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`${username}: page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/WebSocket|ERR_CONNECTION/.test(msg.text())) {
      problems.push(`${username}: console error: ${msg.text()} (${msg.location().url})`);
    }
  });
  await page.goto(`${DJANGO}/`);
  await page.fill("#username", username);
  await page.fill("#password", DEMO.users[username].password);
  await page.click("#login");
  await page.waitForSelector("#pick-form:not([hidden])");
  await page.selectOption("#lesson", String(DEMO.lesson_id));
  if (studentId !== undefined) await page.selectOption("#student", String(studentId));
  await page.click("#open-chat");
  await page.waitForSelector('#conn[data-state="open"]');
  return { page, problems };
}

// A message row of this page, found by its text.
function row(page, text) {
  return page.locator("#messages li", { hasText: text });
}

async function expectAttr(locator, name, value) {
  await locator.waitFor();
  await locator.page().waitForFunction(
    ([el, n, v]) => el.getAttribute(n) === v,
    [await locator.elementHandle(), name, value],
    { timeout: STEP_TIMEOUT_MS },
  );
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

  const question = `Hello mentor, a question about lifetimes ${Date.now()}`;
  await alice.page.locator("#text").pressSequentially(question.slice(0, 12), { delay: 20 });
  await mentor.page.waitForSelector("#typing:not([hidden])");
  const typingText = await mentor.page.textContent("#typing");
  if (!typingText.includes("alice is typing")) throw new Error(`typing indicator says ${typingText}`);
  step("typing indicator shown to the mentor");

  await alice.page.fill("#text", question);
  await alice.page.press("#text", "Enter");
  await row(mentor.page, question).waitFor();
  step("mentor received alice's message");
  await expectAttr(row(alice.page, question), "data-status", "seen");
  await expectAttr(row(alice.page, question), "data-acked", "true");
  const trail = await row(alice.page, question).getAttribute("data-trail");
  if (!/^(sending )?sent\b.*\bseen$/.test(trail)) throw new Error(`alice's message went ${trail}`);
  step(`alice's message: ${trail.replaceAll(" ", " → ")}, acked (read receipt shown)`);
  await mentor.page.locator("#typing").waitFor({ state: "hidden" }); // the message ended the typing

  const answer = `Hi alice! Think of a borrow as a loan ${Date.now()}`;
  await mentor.page.fill("#text", answer);
  await mentor.page.click("#send");
  await row(alice.page, answer).waitFor();
  await expectAttr(row(mentor.page, answer), "data-status", "seen");
  step("alice received the answer; mentor sees it read");

  // The socket drops and a message is written before the page reconnects:
  // it is kept, resent with its client_id once reconnected, and delivered once.
  const offline = `written while the socket was down ${Date.now()}`;
  await alice.page.evaluate((text) => {
    state.ws.close(4000, "e2e: simulated drop"); // eslint-disable-line no-undef
    document.getElementById("text").value = text;
    document.getElementById("send-form").requestSubmit();
  }, offline);
  await expectAttr(row(alice.page, offline), "data-acked", "true");
  await row(mentor.page, offline).waitFor();
  const offlineTrail = await row(alice.page, offline).getAttribute("data-trail");
  if (!offlineTrail.startsWith("sending sent")) throw new Error(`offline message went ${offlineTrail}`);
  await alice.page.waitForSelector('#conn[data-state="open"]');
  const thanks = `thanks! ${Date.now()}`;
  await alice.page.fill("#text", thanks);
  await alice.page.press("#text", "Enter");
  await row(mentor.page, thanks).waitFor();
  step("alice reconnected by herself and the message queued meanwhile was resent and acked");

  // History over REST: a fresh page for alice shows both messages from the store.
  const again = await openChat(browser, "alice");
  await row(again.page, question).waitFor();
  await row(again.page, answer).waitFor();
  const mineStatus = await row(again.page, question).getAttribute("data-status");
  if (mineStatus !== "seen") throw new Error(`history shows alice's message as ${mineStatus}`);
  await again.page.context().close();
  step("a reloaded page shows the history with read receipts");

  // alice's later message has arrived, so a duplicate sent before it would be here too.
  const copies = await row(mentor.page, offline).count();
  if (copies !== 1) throw new Error(`mentor shows the resent message ${copies} times`);

  // Leave the mentor typing, so the screenshot shows the indicator too.
  await mentor.page.locator("#text").pressSequentially("One more thing", { delay: 20 });
  await alice.page.waitForSelector("#typing:not([hidden])");

  const problems = opened.flatMap((o) => o.problems).concat(again.problems);
  if (problems.length) throw new Error(problems.join("\n"));
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
    shots.push({ label, png: await page.screenshot() });
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
