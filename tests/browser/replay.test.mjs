// The dashboard's what-if replay panel (replay.js), end to end: `tollgate demo` on a free
// port, headless Chromium signs in, runs the panel's example policy, and the table must
// show what `POST /admin/replay` answers for the same policy.
//
//   node --test replay.test.mjs      (TOLLGATE_BIN, CHROMIUM as for dashboard.test.mjs)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.TOLLGATE_BIN || path.resolve(here, "../../target/debug/tollgate");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const MASTER_KEY = "tg-demo-master";

let demo, base, dir, profile, browser, page;
let demoOutput = "";

function usd(s) {
  const n = Number(s);
  return (n < 0 ? "-$" : "$") + Math.abs(n).toFixed(Math.abs(n) >= 100 ? 2 : 4);
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `no tollgate binary at ${BIN}`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-replay-browser-"));
  demo = spawn(BIN, ["demo", "--listen", "127.0.0.1:0", "--dir", dir, "--latency-ms", "5", "--token-ms", "0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TOLLGATE_LOG: "warn" },
  });
  demo.stderr.on("data", (d) => { demoOutput += d; });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("demo did not come up:\n" + demoOutput)), 180_000);
    demo.on("exit", (code) => reject(new Error(`demo exited (${code}):\n${demoOutput}`)));
    demo.stdout.on("data", (d) => {
      demoOutput += d;
      const gw = demoOutput.match(/gateway\s+(http:\/\/127\.0\.0\.1:\d+)/);
      if (gw && demoOutput.includes("Press Ctrl-C to stop.")) {
        clearTimeout(timer);
        base = gw[1];
        resolve();
      }
    });
  });
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1700 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on("pageerror", (e) => { throw e; });
});

after(async () => {
  if (browser) await browser.close();
  if (demo && demo.exitCode === null) {
    demo.removeAllListeners("exit");
    demo.kill("SIGINT");
    await new Promise((r) => { demo.on("exit", r); setTimeout(r, 10_000); });
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
});

test("the replay panel shows what /admin/replay answers", async () => {
  await page.goto(base + "/dashboard");
  await page.fill("#key", MASTER_KEY);
  await page.click("#login-form button");
  await page.waitForSelector("#replay-run", { state: "visible" });
  await page.selectOption("#replay-by", "agent");
  const policy = await page.inputValue("#replay-policy");
  await page.click("#replay-run");
  await page.waitForSelector("#replay-out table tbody tr");

  const r = await fetch(base + "/admin/replay?since=30d&group_by=agent", {
    method: "POST",
    headers: { Authorization: "Bearer " + MASTER_KEY },
    body: policy,
  });
  assert.equal(r.status, 200);
  const v = await r.json();
  assert.ok(Number(v.total.saved_nanos) > 0, JSON.stringify(v.total));
  const rows = await page.$$eval("#replay-out tbody tr", (trs) =>
    trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  assert.equal(rows.length, v.groups.length + 1);
  const total = rows[rows.length - 1];
  assert.equal(total[0], "total");
  assert.equal(total[1], v.total.requests.toLocaleString("en-US"));
  assert.equal(total[2], usd(v.total.cost_now_usd));
  assert.equal(total[3], usd(v.total.cost_policy_usd));
  assert.equal(total[4], usd(v.total.saved_usd));
  assert.match(await page.textContent("#replay-status"), /rows replayed/);

  // A policy with a mistake shows the API's message.
  await page.fill("#replay-policy", "[[swap]]\nfrom = \"gpt-5\"\nto = \"gpt-4o-mini\"\n");
  await page.click("#replay-run");
  await page.waitForFunction(() => /swap\[0\]\.from/.test(document.getElementById("replay-status").textContent));
});
