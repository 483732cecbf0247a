// The dashboard, end to end: `tollgate demo` on a free port, headless Chromium signs in
// with the master key, and the page must show the demo's numbers (checked against the
// admin API and against the outcomes the demo records), draw its charts, and update
// live when a new request goes through the gateway. A screenshot is saved.
//
//   TOLLGATE_BIN       the binary (default: ../../target/debug/tollgate)
//   CHROMIUM           the browser (default: /usr/bin/chromium)
//   BROWSER_TEST_OUT   where the screenshot goes (default: ./output)

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
const OUT = process.env.BROWSER_TEST_OUT || path.join(here, "output");
const MASTER_KEY = "tg-demo-master";

let demo, base, supportKey, dir, profile, browser, page;
let demoOutput = "";

// The page's money format (app.js `usd`).
function usd(s) {
  if (s === null || s === undefined) return "n/a";
  const n = Number(s);
  return (n < 0 ? "-$" : "$") + Math.abs(n).toFixed(Math.abs(n) >= 100 ? 2 : 4);
}

// The page's percentage format (app.js `pct`).
function pct(s) {
  if (s === null || s === undefined) return "n/a";
  return Number(s.replace("%", "")).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + "%";
}

function startDemo() {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-browser-"));
  demo = spawn(BIN, ["demo", "--listen", "127.0.0.1:0", "--dir", dir, "--latency-ms", "5", "--token-ms", "0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, TOLLGATE_LOG: "warn" },
  });
  demo.stderr.on("data", (d) => { demoOutput += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("demo did not come up in 180 s:\n" + demoOutput)), 180_000);
    demo.on("exit", (code) => reject(new Error(`demo exited (${code}):\n${demoOutput}`)));
    demo.stdout.on("data", (d) => {
      demoOutput += d;
      const gw = demoOutput.match(/gateway\s+(http:\/\/127\.0\.0\.1:\d+)/);
      const key = demoOutput.match(/completions -H 'Authorization: Bearer (tg-[A-Za-z0-9]+)'/);
      if (gw && key && demoOutput.includes("Press Ctrl-C to stop.")) {
        clearTimeout(timer);
        base = gw[1];
        supportKey = key[1];
        resolve();
      }
    });
  });
}

async function api(p) {
  const r = await fetch(base + p, { headers: { Authorization: "Bearer " + MASTER_KEY } });
  assert.equal(r.status, 200, p);
  return r.json();
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `no tollgate binary at ${BIN} (cargo build -p tollgate, or set TOLLGATE_BIN)`);
  await startDemo();
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "tollgate-chromium-"));
  // A fresh profile each run (Playwright takes it as the persistent context's directory).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1700 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
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

test("the sign-in form refuses a wrong key", async () => {
  await page.goto(base + "/dashboard");
  await page.fill("#key", "not-the-key");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.getElementById("login-error").textContent.length > 0);
  assert.match(await page.textContent("#login-error"), /refused/);
  assert.equal(await page.isVisible("#app"), false);
});

test("signed in, the dashboard shows the demo's numbers and charts", async () => {
  await page.fill("#key", MASTER_KEY);
  await page.click("#login-form button");
  await page.waitForSelector("body[data-loaded=true]", { timeout: 30_000 });
  await page.waitForSelector("#spend-chart canvas");
  const d = await api("/admin/dashboard?since=1h&group_by=agent");

  // KPIs equal the admin API's figures.
  const kpi = (k) => page.textContent(`[data-kpi="${k}"]`);
  assert.equal(await kpi("cost"), usd(d.totals.cost_usd));
  assert.equal(await kpi("requests"), Number(d.totals.requests).toLocaleString("en-US"));
  // The demo records 13 outcomes, 9 of them successes, over 15 tasks (the ops task the
  // runaway-agent guard halts and the FAQ desk have no outcome).
  assert.equal(await kpi("tasks"), "9 / 15");
  // 72 min at $35 (support) + $120 (research) + 40 min at $60 (reviews) + 9 min at $60
  // (triage) + $25 (copy) = $236.
  assert.equal(d.totals.value_usd, "236.000000000");
  assert.equal(await kpi("value"), "$236.00");
  assert.equal(await kpi("roi"), pct(d.totals.roi_pct));
  assert.equal(await kpi("saved"), usd(d.totals.saved_usd));
  assert.ok(Number(d.totals.saved_usd) > 0, "the demo's cached prompts save money");

  // Value per dollar by agent: one row per agent, with the demo's values.
  const expectedValue = {
    "support-bot": "$42.0000", "research-agent": "$120.00", "code-reviewer": "$40.0000",
    "triage-agent": "$9.0000", "writer-assistant": "$25.0000",
    // The ops agent the runaway-agent guard halts records no outcome: no value.
    "ops-agent": "$0.0000",
    // The FAQ bot's desk records no outcome either.
    "faq-bot": "$0.0000",
  };
  for (const g of d.roi.groups) {
    const row = page.locator(`#roi-table tr[data-group="${g.group}"]`);
    const cells = await row.locator("td").allTextContents();
    assert.equal(cells[1], `${g.succeeded} / ${g.tasks}`, g.group);
    assert.equal(cells[3], usd(g.cost_usd), g.group);
    assert.equal(cells[4], expectedValue[g.group], g.group);
    assert.equal(cells[5], usd(g.cost_per_successful_task_usd), g.group);
    assert.equal(cells[8], pct(g.roi_pct), g.group);
  }
  assert.deepEqual(d.roi.groups.map((g) => g.group).sort(),
    ["code-reviewer", "faq-bot", "ops-agent", "research-agent", "support-bot", "triage-agent", "writer-assistant"]);

  // Spend over time: a uPlot chart stacked by agent, with pixels drawn.
  const legend = await page.locator("#spend-chart .u-legend").textContent();
  for (const a of ["support-bot", "research-agent", "code-reviewer", "triage-agent", "writer-assistant"]) {
    assert.ok(legend.includes(a), legend);
  }
  const painted = await page.evaluate(() => {
    const c = document.querySelector("#spend-chart canvas");
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  });
  assert.ok(painted > 2000, `chart drew ${painted} pixels`);

  // Savings by mechanism.
  const saved = await page.textContent('[data-mechanism="prompt_cache"] .saved');
  assert.equal(saved, usd(d.savings.mechanisms[0].saved_usd));

  // Top tasks by cost, with outcomes.
  const top = await page.locator("#tasks-table tbody tr").count();
  assert.equal(top, d.top_tasks.length);
  const churn = await page.locator('#tasks-table tr[data-task="report-q3-churn"] .status').textContent();
  assert.equal(churn, "success");

  // Budgets and the runaway-agent guard: the demo's research budget, and the ops task
  // the guard halted.
  assert.match(await page.textContent("#budgets"), /team:research/);
  assert.match(await page.textContent("#budgets"), /\$[0-9.]+ of \$0\.0120/);
  assert.ok((await page.$$("#budgets .bar .tick")).length > 0, "budget thresholds are marked");
  assert.match(await page.textContent("#halted"), /deploy-watch-7/);
  assert.match(await page.textContent("#halted table"), /loop detected/);
  assert.match(await page.textContent("#alerts table"), /budget threshold/);

  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, "dashboard.png"), fullPage: true });
});

test("the dashboard updates live, without a reload", async () => {
  const before = Number((await page.textContent('[data-kpi="requests"]')).replace(/,/g, ""));
  const r = await fetch(base + "/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: "Bearer " + supportKey, "content-type": "application/json", "x-tollgate-task": "ticket-live" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hello" }] }),
  });
  assert.equal(r.status, 200);
  await r.text();
  await page.waitForFunction(
    (n) => Number(document.querySelector('[data-kpi="requests"]').textContent.replace(/,/g, "")) > n,
    before, { timeout: 20_000 });
  const after = Number((await page.textContent('[data-kpi="requests"]')).replace(/,/g, ""));
  assert.equal(after, before + 1);
});
