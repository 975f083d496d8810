// Real-browser test: headless Chromium goes through `make run`'s stack (the local-stack
// binary) from the start link to the success page, as a popup opened by the AutoKitteh UI
// would, and through a declined consent to its error page. Then the same inside AutoKitteh
// (LOCAL_AUTOKITTEH=1): sign in at the stand-in AutoKitteh, press Connect, and the popup goes
// through the front door to AutoKitteh's success page, with the connection OK afterwards.
//
// Env: LOCAL_STACK_BIN (default target/debug/local-stack), CHROMIUM (default
// /usr/bin/chromium), AWS_ENDPOINT_URL (optional: reuse a running moto).

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.LOCAL_STACK_BIN ?? path.join(root, "target/debug/local-stack");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const artifacts = path.join(root, "target/browser");
mkdirSync(artifacts, { recursive: true });

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

function fail(message) {
  throw new Error(message);
}

// The key the platform signs start grants with, in this test's stack.
const startLinkKey = `browser-test-start-link-key-${randomBytes(16).toString("hex")}`;

// A start link as the platform mints it: an HS256 JWT naming the user and the connection,
// opening once within a minute.
function mintLink(appPort, { cid, user, name }) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    aud: "autokitteh-oauth-start:microsoft", cid, origin: "web", sub: user, name,
    jti: randomBytes(16).toString("hex"), iat: now, exp: now + 60,
  };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const signature = createHmac("sha256", startLinkKey).update(unsigned).digest("base64url");
  return `http://localhost:${appPort}/oauth/start/microsoft?cid=${cid}&origin=web&grant=${unsigned}.${signature}`;
}

function newCid() {
  const alphabet = "0123456789abcdefghjkmnpqrstvwxyz";
  return `con_${[...randomBytes(26)].map((b) => alphabet[b % alphabet.length]).join("")}`;
}

async function startStack(extraEnv = {}, marker = /^START_LINK=(\S+)$/m) {
  const [appPort, standinPort, motoPort] = [await freePort(), await freePort(), await freePort()];
  const env = {
    ...process.env,
    ...extraEnv,
    WEBHOOK_ADDRESS: `http://localhost:${appPort}`,
    START_LINK_KEY: startLinkKey,
    STANDIN_PORT: String(standinPort),
    MOTO_PORT: String(motoPort),
    OAUTH_TABLE_NAME: `autokitteh-oauth-browser-${Date.now()}`,
    RUST_LOG: "warn",
  };
  const child = spawn(bin, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const link = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`local stack did not print a start link:\n${output}`)), 90_000);
    const onData = (chunk) => {
      output += chunk.toString();
      const match = output.match(marker);
      if (match && output.includes("Ready.")) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`local stack exited (${code}):\n${output}`)));
  });
  return { child, link, appPort };
}

function launch() {
  return chromium.launch({
    executablePath: browserPath,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

// Inside AutoKitteh: the stand-in's sign-in and connection list, its Connect link opened as
// a popup the way AutoKitteh's UI does, and the session cookies crossing the front door.
async function insideAutoKitteh() {
  const [akPort, functionsPort] = [await freePort(), await freePort()];
  const { child, link: home } = await startStack(
    { LOCAL_AUTOKITTEH: "1", AUTOKITTEH_STANDIN_PORT: String(akPort), LOCAL_PORT: String(functionsPort) },
    /^Open (\S+)\/ in a browser/m,
  );
  const browser = await launch();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${home}/`);
    (await page.textContent("body")).includes("NOT AutoKitteh") || fail("the stand-in must say it is not AutoKitteh");
    await page.click("text=Sign in as dev@autokitteh.local");
    await page.waitForSelector("#user", { timeout: 15_000 });
    const row = page.locator("li", { hasText: "my_microsoft" });
    (await row.locator(".status").textContent()) === "CODE_INIT_REQUIRED" || fail("connection must start uninitialised");
    const connect = await row.locator("a").getAttribute("href");
    const [popup] = await Promise.all([
      context.waitForEvent("page"),
      page.evaluate((url) => window.open(url, "ms-oauth", "width=600,height=700"), connect),
    ]);
    await popup.waitForSelector("#accept-work", { timeout: 15_000 });
    await popup.click("#accept-work");
    await popup.waitForSelector("#done", { timeout: 15_000 });
    popup.url().endsWith("/success") || fail(`popup should end at AutoKitteh's success page, is at ${popup.url()}`);
    await popup.screenshot({ path: path.join(artifacts, "autokitteh-success.png") });
    await page.reload();
    const status = await page.locator("li", { hasText: "my_microsoft" }).locator(".status").textContent();
    status === "CODE_OK" || fail(`AutoKitteh should show the connection OK, shows ${status}`);
    console.log("ok - AutoKitteh sign-in → Connect popup → front door → consent → AutoKitteh success; connection OK");

    // Signed out, the same start is refused with a way to sign in.
    const anonymous = await browser.newContext();
    const tab = await anonymous.newPage();
    const response = await tab.goto(`${home}${new URL(connect, home).pathname.replace("/microsoft/save", "/oauth/start/microsoft")}?${new URL(connect, home).searchParams}`);
    (response && response.status() === 401) || fail(`a start without AutoKitteh sign-in must be refused, got ${response && response.status()}`);
    await tab.waitForSelector("text=Sign in to AutoKitteh first", { timeout: 15_000 });
    console.log("ok - a start without an AutoKitteh sign-in says to sign in");
  } finally {
    await browser.close();
    child.kill("SIGINT");
  }
}

// Microsoft's authorize may pass the browser through another origin before its sign-in
// page (personal accounts at login.live.com, a federated identity provider). Chromium applies
// the confirmation page's CSP form-action to every redirect after its post, so the page must
// not restrict it: the sign-in has to reach the stand-in's page after the hop and finish.
async function throughAnotherOrigin() {
  const { child, link } = await startStack({ STANDIN_AUTHORIZE_HOP: "1" });
  const browser = await launch();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    const violations = [];
    page.on("console", (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text());
    });
    const visited = [];
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) visited.push(frame.url());
    });
    await page.goto(link);
    await page.waitForSelector("text=Connect a Microsoft account?", { timeout: 15_000 });
    await page.click("text=Continue to Microsoft");
    await page.waitForSelector("#accept-work", { timeout: 15_000 }).catch(() =>
      fail(`the sign-in stopped after the post (CSP form-action?) at ${page.url()}: ${violations.join(" ")}`));
    // Only the hop leads to the stand-in's /login page.
    visited.some((u) => u.includes("/oauth2/v2.0/login?")) || fail(`the authorize hop was not passed: ${visited}`);
    await page.click("#accept-work");
    await page.waitForSelector("text=Microsoft account connected", { timeout: 15_000 });
    violations.length === 0 || fail(`CSP violations: ${violations.join("\n")}`);
    console.log("ok - authorize passing through another origin still reaches its sign-in page and finishes");
  } finally {
    await browser.close();
    child.kill("SIGINT");
  }
}

// A mail scanner opens the start link first (a cookie-less fetch): the person it was sent to
// still finds it usable, and their sign-in finishes.
async function scannedFirst() {
  const { child, link } = await startStack();
  const browser = await launch();
  try {
    for (let i = 0; i < 2; i++) {
      const scanned = await fetch(link, { redirect: "manual" });
      scanned.status === 200 || fail(`a scanner's fetch must see the confirmation, got ${scanned.status}`);
    }
    const context = await browser.newContext();
    // Watches the confirm button: when the page's script disables it, and when it arms it.
    await context.addInitScript(() => {
      window.__disabledAt = null;
      window.__armedAt = null;
      new MutationObserver(() => {
        const b = document.getElementById("continue");
        if (!b) return;
        if (b.disabled) window.__disabledAt ??= performance.now();
        else if (window.__disabledAt !== null) window.__armedAt ??= performance.now();
      }).observe(document, { subtree: true, attributes: true, attributeFilter: ["disabled"] });
    });
    const page = await context.newPage();
    await page.goto(link);
    await page.waitForSelector("text=Connect a Microsoft account?", { timeout: 15_000 });
    // The button cannot be pressed in the first moment after the page appears.
    await page.waitForFunction(() => window.__armedAt !== null, null, { timeout: 15_000 });
    const [disabledAt, armedAt] = await page.evaluate(() => [window.__disabledAt, window.__armedAt]);
    armedAt - disabledAt >= 450 || fail(`the confirm button armed after ${armedAt - disabledAt} ms`);
    await page.click("text=Continue to Microsoft");
    await page.waitForSelector("#accept-work", { timeout: 15_000 });
    await page.click("#accept-work");
    await page.waitForSelector("text=Microsoft account connected", { timeout: 15_000 });
    console.log("ok - a link a scanner opened first still signs its person in; the button arms after a moment");
  } finally {
    await browser.close();
    child.kill("SIGINT");
  }
}

async function main() {
  const { child, link, appPort } = await startStack();
  const browser = await chromium.launch({
    executablePath: browserPath,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    // Playwright gives every launch a fresh, empty profile of its own.
  });
  const violations = [];
  try {
    const context = await browser.newContext();
    context.on("console", (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text());
    });

    // 1. Success, in a popup opened by an "AutoKitteh" page, which closes itself at the end.
    const opener = await context.newPage();
    await opener.goto("about:blank");
    const [popup] = await Promise.all([
      context.waitForEvent("page"),
      opener.evaluate((url) => window.open(url, "ms-oauth", "width=600,height=700"), link),
    ]);
    popup.on("console", (msg) => {
      if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text());
    });
    const visited = [];
    popup.on("framenavigated", (frame) => {
      if (frame === popup.mainFrame()) visited.push(frame.url());
    });
    // The start link first shows who and what is being connected, and waits for the button.
    await popup.waitForSelector("text=Connect a Microsoft account?", { timeout: 15_000 });
    const asked = await popup.textContent("main");
    asked.includes("If someone sent you this link") || fail(`the confirmation lacks its warning: ${asked}`);
    await popup.screenshot({ path: path.join(artifacts, "confirm.png") });
    await popup.click("text=Continue to Microsoft");
    await popup.waitForSelector("#accept-work", { timeout: 15_000 });
    (await popup.textContent("body")).includes("not Microsoft") || fail("the stand-in page must say it is not Microsoft");
    const closed = popup.waitForEvent("close", { timeout: 15_000 });
    await popup.click("#accept-work");
    await popup.waitForSelector("text=Microsoft account connected", { timeout: 15_000 });
    const text = await popup.textContent("main");
    text.includes("adele.vance@contoso.example") || fail(`success page does not name the account: ${text}`);
    // The success page is the callback itself; no token ever travelled in a URL.
    new URL(popup.url()).pathname === "/oauth/redirect/microsoft" || fail(`success page at ${popup.url()}`);
    visited.some((u) => u.includes("/authorize?")) && visited.some((u) => u.includes("/oauth/redirect/microsoft?"))
      || fail(`navigations not seen: ${visited}`);
    const leaked = visited.filter((u) => /[?&#](access_token|refresh_token|id_token)=/.test(u));
    leaked.length === 0 || fail(`a token reached a URL: ${leaked.join(" ")}`);
    await popup.screenshot({ path: path.join(artifacts, "success.png") });
    await closed;
    console.log("ok - start link → confirmation → stand-in consent → success page; the popup closed itself");

    // 2. The same link again: it opens once.
    const tab = await context.newPage();
    const again = await tab.goto(link);
    (again && again.status() === 403) || fail(`a used start link must be refused, got ${again && again.status()}`);
    await tab.waitForSelector("text=This sign-in link was already used", { timeout: 15_000 });
    console.log("ok - a start link opens once");

    // 3. A victim opens a link minted for someone else's connection: the page names it, and
    // another site cannot press the button for them (Chromium sends no SameSite=Strict cookie
    // and says the post is cross-site).
    const attackers = newCid();
    await tab.goto(mintLink(appPort, { cid: attackers, user: "mallory@example.com", name: "Mallory's sync" }));
    await tab.waitForSelector("text=Connect a Microsoft account?", { timeout: 15_000 });
    const shown = await tab.textContent("main");
    (shown.includes("Mallory's sync") && shown.includes("mallory@example.com") && shown.includes(attackers))
      || fail(`the confirmation must name the connection and its user: ${shown}`);
    const ticket = await tab.getAttribute("input[name=ticket]", "value");
    const elsewhere = await context.newPage();
    await elsewhere.setContent(`<form method="post" action="http://localhost:${appPort}/oauth/start/microsoft">
      <input type="hidden" name="ticket" value="${ticket}"></form>`);
    const [posted] = await Promise.all([
      elsewhere.waitForNavigation({ timeout: 15_000 }),
      elsewhere.evaluate(() => document.forms[0].submit()),
    ]);
    (posted && posted.status() === 403) || fail(`a cross-site confirmation must be refused, got ${posted && posted.status()}`);
    await elsewhere.waitForSelector("text=This confirmation came from another site", { timeout: 15_000 });
    await elsewhere.screenshot({ path: path.join(artifacts, "cross-site-refused.png") });
    console.log("ok - the confirmation names the sender's connection; another site cannot confirm it");

    // 4. Declined consent, in a plain tab: a clear error page.
    await tab.goto(mintLink(appPort, { cid: newCid(), user: "dev@autokitteh.local", name: "My mail" }));
    await tab.click("text=Continue to Microsoft");
    await tab.click("#cancel");
    await tab.waitForSelector("text=You declined the permissions", { timeout: 15_000 });
    const response = await tab.reload();
    (response && response.status() === 400) || fail(`reloading the finished callback must be refused, got ${response && response.status()}`);
    await tab.waitForSelector("text=unknown or already finished", { timeout: 15_000 });
    await tab.screenshot({ path: path.join(artifacts, "reload-refused.png") });
    console.log("ok - declined consent shows what happened; reloading the used callback is refused");

    violations.length === 0 || fail(`CSP violations: ${violations.join("\n")}`);
    console.log("ok - no Content-Security-Policy violations");
  } finally {
    await browser.close();
    child.kill("SIGINT");
  }
  await insideAutoKitteh();
  await throughAnotherOrigin();
  await scannedFirst();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`not ok - ${e.stack ?? e}`);
    process.exit(1);
  },
);
