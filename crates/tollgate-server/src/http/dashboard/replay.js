// tollgate dashboard, what-if replay panel: posts a replay policy (TOML) to
// POST /admin/replay with the signed-in master key and shows "now vs policy" per group,
// as a table and paired bars. Self-contained: it adds its own card to the page.
"use strict";
(function () {
  const EXAMPLE = [
    "# Another policy for the recorded workload (see README, What-if replay).",
    "[[swap]]",
    'from = "gpt-4o"',
    'to = "gpt-4o-mini"',
    "token_ratio = 1.0",
    "",
    "[prompt_cache]",
    'mode = "on"',
    'ttl = "5m"',
    "",
  ].join("\n");
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };
  const usd = (s) => {
    const n = Number(s);
    return (n < 0 ? "-$" : "$") + Math.abs(n).toFixed(Math.abs(n) >= 100 ? 2 : 4);
  };

  function panel() {
    const policy = el("textarea", { id: "replay-policy", rows: "10", spellcheck: "false", style: "width:100%;font-family:monospace" });
    policy.value = EXAMPLE;
    const since = el("select", { id: "replay-since" },
      ...["1h", "24h", "7d", "30d"].map((v) => el("option", v === "30d" ? { value: v, selected: "" } : { value: v }, v)));
    const by = el("select", { id: "replay-by" },
      ...["agent", "model", "route", "team"].map((v) => el("option", { value: v }, v)));
    const run = el("button", { type: "button", id: "replay-run" }, "Replay");
    const status = el("p", { id: "replay-status", class: "note" });
    const out = el("div", { id: "replay-out" });
    const card = el("section", { class: "card wide", id: "replay" },
      el("h2", { text: "What-if replay" }),
      el("p", { class: "note", text: "Re-price the recorded workload under another policy: model swap, prices, routing threshold, prompt and response caching, pruning. Nothing is sent upstream." }),
      policy,
      el("div", {}, el("label", {}, "window ", since), " ", el("label", {}, "by ", by), " ", run),
      status, out);
    run.addEventListener("click", () => replay(policy.value, since.value, by.value, status, out));
    return card;
  }

  async function replay(text, since, by, status, out) {
    const key = sessionStorage.getItem("tollgate-key") || "";
    status.textContent = "replaying…";
    out.replaceChildren();
    let resp, body;
    try {
      resp = await fetch("/admin/replay?" + new URLSearchParams({ since, group_by: by }), {
        method: "POST",
        headers: { Authorization: "Bearer " + key, "content-type": "application/toml" },
        body: text,
      });
      body = await resp.json();
    } catch (e) {
      status.textContent = "replay failed: " + e;
      return;
    }
    if (!resp.ok) {
      status.textContent = (body && body.error && body.error.message) || ("HTTP " + resp.status);
      return;
    }
    status.textContent = body.rows.toLocaleString("en-US") + " rows replayed";
    render(body, out);
  }

  function render(r, out) {
    const groups = r.groups.concat([r.total]);
    const max = Math.max(1, ...groups.map((g) => Math.max(g.cost_now_nanos, g.cost_policy_nanos)));
    const bar = (nanos, color) => el("div", {
      style: "height:8px;margin:1px 0;background:" + color + ";width:" + (100 * Math.max(0, nanos) / max).toFixed(1) + "%",
    });
    const tbody = el("tbody", {}, ...groups.map((g) => el("tr", {},
      el("td", { text: g.group }),
      el("td", { class: "num", text: g.requests.toLocaleString("en-US") }),
      el("td", { class: "num", text: usd(g.cost_now_usd), title: "$" + g.cost_now_usd }),
      el("td", { class: "num", text: usd(g.cost_policy_usd), title: "$" + g.cost_policy_usd }),
      el("td", { class: "num", text: usd(g.saved_usd), title: "$" + g.saved_usd }),
      el("td", { class: "num", text: g.saved_pct || "n/a" }),
      el("td", { class: "num", text: g.quality_risk_pct ? g.quality_risk_pct + " (" + g.tasks_at_risk + "/" + g.tasks_succeeded + ")" : "n/a" }),
      el("td", { style: "min-width:160px" }, bar(g.cost_now_nanos, "#9aa5b1"), bar(g.cost_policy_nanos, "#2b7bb9")))));
    const table = el("table", { class: "data" },
      el("thead", {}, el("tr", {}, ...["group", "requests", "now", "policy", "saved", "saved %", "quality risk", "now vs policy"]
        .map((h, i) => el("th", { class: i > 0 && i < 7 ? "num" : "", text: h })))),
      tbody);
    out.append(table, ...r.notes.map((n) => el("p", { class: "note", text: n })));
  }

  function mount() {
    const app = document.getElementById("app");
    if (app && !document.getElementById("replay")) app.append(panel());
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount); else mount();
})();
