// tollgate dashboard: polls /admin/dashboard with the master key and renders it.
// No framework, no network beyond this gateway; charts by the vendored uPlot.
"use strict";
(function () {
  const REFRESH_MS = 3000;
  const COLORS = ["#3358d4", "#e07b39", "#1a9e77", "#c2417b", "#7b61c9", "#b59a1b", "#2aa0c9", "#8c564b", "#7f7f7f"];
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };

  // Money arrives as exact decimal strings; shown rounded, the exact value in `title`.
  function usd(s) {
    if (s === null || s === undefined) return "n/a";
    const n = Number(s);
    return (n < 0 ? "-$" : "$") + Math.abs(n).toFixed(Math.abs(n) >= 100 ? 2 : 4);
  }
  function usdCell(s, cls) {
    const td = el("td", { class: "num " + (cls || ""), text: usd(s) });
    if (s !== null && s !== undefined) td.title = "$" + s; else td.classList.add("na");
    return td;
  }
  function num(n) { return Number(n).toLocaleString("en-US"); }
  // "1623280.5%" → "1,623,280.5%" (the exact figure stays in the API's answer).
  function pct(s) {
    if (s === null || s === undefined) return "n/a";
    const n = Number(s.replace("%", ""));
    return n.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + "%";
  }
  function dur(ms) {
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }

  let key = sessionStorage.getItem("tollgate-key") || "";
  let timer = null;
  let chart = null;
  let chartSig = "";
  let lastSpend = null;

  function showLogin(msg) {
    $("login").hidden = false;
    $("app").hidden = true;
    $("controls").hidden = true;
    $("login-error").textContent = msg || "";
    if (timer) clearTimeout(timer);
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("controls").hidden = false;
  }

  async function load() {
    if (timer) clearTimeout(timer);
    const q = new URLSearchParams({ since: $("since").value, group_by: $("group").value });
    let resp;
    try {
      resp = await fetch("/admin/dashboard?" + q, { headers: { Authorization: "Bearer " + key } });
    } catch (e) {
      $("live").classList.add("stale");
      $("live").textContent = "● offline";
      timer = setTimeout(load, REFRESH_MS);
      return;
    }
    if (resp.status === 401) {
      sessionStorage.removeItem("tollgate-key");
      showLogin("That key was refused. Use the master key.");
      return;
    }
    if (!resp.ok) {
      $("live").classList.add("stale");
      $("live").textContent = "● error " + resp.status;
      timer = setTimeout(load, REFRESH_MS);
      return;
    }
    const data = await resp.json();
    showApp();
    render(data);
    $("live").classList.remove("stale");
    $("live").textContent = "● live";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
    timer = setTimeout(load, REFRESH_MS);
  }

  function render(d) {
    renderKpis(d.totals);
    renderSpend(d.spend);
    renderRoi(d.roi);
    renderSavings(d.savings);
    renderTasks(d.top_tasks);
    renderBudgets(d.budgets);
    renderTable($("halted"), d.halted_tasks, "No task has been halted.", [
      ["task", (r) => r.task],
      ["agent", (r) => r.agent || "(none)"],
      ["status", (r) => el("span", { class: "status " + (r.status === "halted" ? "failure" : "success"), text: r.status })],
      ["why", (r) => r.reason + (r.recorded_elsewhere ? " (recorded by another replica)" : ""), "wrap"],
      ["when", (r) => shortTime(r.at)],
    ]);
    renderTable($("alerts"), d.alerts, "No alerts.", [
      ["when", (r) => shortTime(r.at)],
      ["kind", (r) => (r.kind || "").replace(/_/g, " ")],
      ["alert", (r) => r.text, "wrap"],
      ["delivery", (r) => r.delivery],
    ]);
  }

  function setKpi(name, text, title, cls) {
    const e = document.querySelector('[data-kpi="' + name + '"]');
    e.textContent = text;
    e.title = title || "";
    e.className = "value " + (cls || "");
  }

  function renderKpis(t) {
    setKpi("cost", usd(t.cost_usd), "$" + t.cost_usd);
    setKpi("requests", num(t.requests), t.errors + " errors");
    setKpi("tasks", t.succeeded + " / " + t.tasks);
    setKpi("value", usd(t.value_usd), "$" + t.value_usd);
    setKpi("roi", pct(t.roi_pct), "(value − cost) / cost",
      t.roi_pct === null ? "na" : (t.roi_pct.startsWith("-") ? "neg" : "pos"));
    setKpi("cpst", usd(t.cost_per_successful_task_usd),
      t.cost_per_successful_task_usd === null ? "no task succeeded: undefined" : "$" + t.cost_per_successful_task_usd,
      t.cost_per_successful_task_usd === null ? "na" : "");
    setKpi("saved", usd(t.saved_usd), "$" + t.saved_usd);
  }

  function renderSpend(s) {
    lastSpend = s;
    const box = $("spend-chart");
    const any = s.series.some((x) => x.usd.some((v) => v > 0));
    $("spend-empty").hidden = any;
    box.hidden = !any;
    $("spend-sub").textContent = "stacked by " + s.group_by + ", per " + dur(s.bucket_ms);
    if (!any) { if (chart) { chart.destroy(); chart = null; chartSig = ""; } return; }
    const xs = s.times_ms.map((t) => t / 1000);
    // Stack: series i is drawn at the running total of series 0..i; draw the tallest
    // first so each band shows through.
    const cum = [];
    let run = xs.map(() => 0);
    for (const ser of s.series) { run = run.map((v, i) => v + ser.usd[i]); cum.push(run); }
    const order = s.series.map((_, i) => i).reverse();
    const data = [xs, ...order.map((i) => cum[i])];
    const sig = s.group_by + "|" + s.bucket_ms + "|" + s.series.map((x) => x.name).join(",") + "|" + box.clientWidth;
    if (chart && sig === chartSig) { chart.setData(data); return; }
    if (chart) chart.destroy();
    box.textContent = "";
    chartSig = sig;
    const series = [{ label: "time" }].concat(order.map((i) => ({
      label: s.series[i].name,
      stroke: COLORS[i % COLORS.length],
      fill: COLORS[i % COLORS.length] + "cc",
      width: 1,
      points: { show: false },
      value: (u, v, si, idx) => idx == null ? "" : "$" + lastSpend.series[i].usd[idx].toFixed(6),
    })));
    chart = new uPlot({
      width: Math.max(300, box.clientWidth),
      height: 300,
      series: series,
      axes: [{}, {
        size: 80,
        // As many decimals as the tick spacing needs: $0.0025, $0.0050, ... or $10, $20.
        values: (u, vals, ax, space, incr) => {
          const dec = Math.min(8, Math.max(0, -Math.floor(Math.log10(incr || 1))));
          return vals.map((v) => "$" + v.toFixed(dec));
        },
      }],
      scales: { x: { time: true } },
      legend: { live: true },
    }, data, box);
  }

  function roiBar(roi, maxAbs) {
    const bar = el("div", { class: "bar" });
    if (roi === null) return bar;
    const zero = 50;
    const w = Math.min(50, Math.abs(roi) / (maxAbs || 1) * 50);
    const fill = el("span", { class: roi >= 0 ? "fill-pos" : "fill-neg" });
    fill.style.left = (roi >= 0 ? zero : zero - w) + "%";
    fill.style.width = w + "%";
    const z = el("span", { class: "zero" });
    z.style.left = zero + "%";
    bar.append(fill, z);
    return bar;
  }

  function renderRoi(r) {
    const tb = $("roi-table").querySelector("tbody");
    tb.textContent = "";
    $("roi-empty").hidden = r.groups.length > 0;
    $("roi-table").hidden = r.groups.length === 0;
    const maxAbs = Math.max(1, ...r.groups.map((g) => Math.abs(g.roi || 0)));
    for (const g of r.groups) {
      const roiTxt = el("span", { class: "txt " + (g.roi === null ? "na" : g.roi >= 0 ? "pos" : "neg"), text: pct(g.roi_pct) });
      tb.append(el("tr", { "data-group": g.group || "(none)" },
        el("td", { text: g.group || "(none)" }),
        el("td", { class: "num", text: g.succeeded + " / " + g.tasks }),
        el("td", { class: "num" + (g.success_rate_pct === null ? " na" : ""), text: pct(g.success_rate_pct) }),
        usdCell(g.cost_usd),
        usdCell(g.value_usd),
        usdCell(g.cost_per_successful_task_usd, "cpst"),
        el("td", { class: "num" + (g.successful_tasks_per_usd === null ? " na" : ""), text: g.successful_tasks_per_usd === null ? "n/a" : g.successful_tasks_per_usd.toFixed(2) }),
        el("td", { class: "num" + (g.value_per_usd === null ? " na" : ""), text: g.value_per_usd === null ? "n/a" : "$" + g.value_per_usd.toLocaleString("en-US", { maximumFractionDigits: 2 }) }),
        el("td", { class: "roi" }, el("div", { class: "roi-cell" }, roiTxt, roiBar(g.roi, maxAbs)))));
    }
  }

  function renderSavings(s) {
    const box = $("savings");
    box.textContent = "";
    for (const m of s.mechanisms) {
      const base = Number(m.without_usd), act = Number(m.actual_usd);
      const max = Math.max(base, act, 1e-12);
      const row = (k, v, cls, val) => {
        const b = el("div", { class: "bar" });
        const f = el("span", { class: cls });
        f.style.left = "0"; f.style.width = (v / max * 100) + "%";
        b.append(f);
        return el("div", { class: "row" }, el("span", { class: "k", text: k }), b, el("span", { class: "v", text: usd(val) }));
      };
      box.append(el("div", { class: "mech", "data-mechanism": m.mechanism },
        el("div", {}, el("strong", { text: m.mechanism.replaceAll("_", " ") }), " ",
          el("span", { class: "sub", text: m.requests + (m.realised === false ? " calls · would have saved " : " calls · saved ") })
          , el("strong", { class: Number(m.saved_usd) >= 0 ? "pos saved" : "neg saved", text: usd(m.saved_usd) }),
          el("span", { class: "sub", text: m.saved_pct ? " (" + m.saved_pct + ")" : "" })),
        m.requests > 0 ? row(m.realised === false ? "charged" : "without", base, "fill-base", m.without_usd) : null,
        m.requests > 0 ? row(m.realised === false ? "if routed" : "charged", act, "fill-act", m.actual_usd) : null));
    }
    if (s.mechanisms.every((m) => m.requests === 0)) {
      box.append(el("p", { class: "empty", text: "No call in this window used a saving mechanism yet." }));
    }
  }

  function renderTasks(tasks) {
    const tb = $("tasks-table").querySelector("tbody");
    tb.textContent = "";
    $("tasks-empty").hidden = tasks.length > 0;
    $("tasks-table").hidden = tasks.length === 0;
    for (const t of tasks) {
      const st = t.status || "open";
      const tokens = t.input_tokens + t.cached_tokens + t.cache_write_tokens + t.output_tokens;
      tb.append(el("tr", { "data-task": t.task },
        el("td", { text: t.task }),
        el("td", { text: t.agents.join(", ") || "(none)" }),
        el("td", { text: t.models.join(", ") }),
        el("td", { class: "num", text: num(t.calls) }),
        el("td", { class: "num", text: num(tokens), title: "input " + t.input_tokens + ", cached " + t.cached_tokens + ", output " + t.output_tokens + " (reasoning " + t.reasoning_tokens + ")" }),
        usdCell(t.cost_usd),
        el("td", { class: "num", text: dur(t.duration_ms) }),
        el("td", {}, el("span", { class: "status " + st, text: st })),
        usdCell(t.value_usd)));
    }
  }

  // Budget burn-down: this period's spend against each budget's limit, with its alert
  // thresholds marked on the bar.
  function renderBudgets(b) {
    const box = $("budgets");
    box.textContent = "";
    if (!b.available) { box.append(el("p", { class: "empty", text: "No budgets: " + b.note + "." })); return; }
    if (b.rows.length === 0) { box.append(el("p", { class: "empty", text: "No budgets configured." })); return; }
    for (const r of b.rows) {
      const limit = Number(r.limit_usd), spent = Number(r.spent_usd);
      const share = limit > 0 ? spent / limit : 0;
      const line = el("div", { class: "mech budget" },
        el("div", { class: "budget-head" },
          el("b", { text: r.scope }),
          el("span", { class: "note", text: " · " + r.period + (r.hard ? " · hard limit" : " · soft (alerts only)") })),
        el("div", { class: "row" },
          el("span", { class: "k", text: (share * 100).toFixed(1) + "%" }),
          (() => {
            const bar = el("div", { class: "bar", title: "alerts at " + (r.alert_at_pct || []).join("%, ") + "%" });
            const f = el("span", { class: share >= 1 ? "fill-neg" : share >= 0.8 ? "fill-warn" : "fill-act" });
            f.style.left = "0"; f.style.width = Math.min(100, share * 100) + "%";
            bar.append(f);
            for (const t of r.alert_at_pct || []) {
              const tick = el("i", { class: "tick", title: t + "% alert" });
              tick.style.left = Math.min(100, t) + "%";
              bar.append(tick);
            }
            return bar;
          })(),
          el("span", { class: "v", text: usd(r.spent_usd) + " of " + usd(r.limit_usd) })),
        el("div", { class: "note", text: "remaining " + usd(r.remaining_usd) }));
      box.append(line);
    }
  }

  function shortTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString("en-GB", { day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // A panel of rows as a table: cols are [header, cell(row) -> text or node, class].
  function renderTable(box, p, none, cols) {
    box.textContent = "";
    if (!p.available) { box.append(el("p", { class: "empty", text: "None: " + p.note + "." })); return; }
    if (p.rows.length === 0) { box.append(el("p", { class: "empty", text: none })); return; }
    const head = el("tr", {}, ...cols.map(([h]) => el("th", { text: h })));
    const body = el("tbody");
    for (const r of p.rows) {
      body.append(el("tr", {}, ...cols.map(([, f, cls]) => {
        const v = f(r);
        return typeof v === "string" || typeof v === "number" || v == null
          ? el("td", { class: cls || "", text: v == null ? "" : String(v) })
          : el("td", { class: cls || "" }, v);
      })));
    }
    box.append(el("table", { class: "data" }, el("thead", {}, head), body));
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem("tollgate-key", key);
    load();
  });
  $("logout").addEventListener("click", () => {
    key = "";
    sessionStorage.removeItem("tollgate-key");
    showLogin("");
  });
  $("since").addEventListener("change", load);
  $("group").addEventListener("change", () => { chartSig = ""; load(); });
  window.addEventListener("resize", () => { chartSig = ""; if (lastSpend) renderSpend(lastSpend); });

  if (key) load(); else showLogin("");
})();
