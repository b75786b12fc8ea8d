// labelblocks review page: decisions on proposals (Accept / Reject, keyboard), and task progress.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  async function decide(jobId, ids, decision) {
    const r = await fetch(`/jobs/${jobId}/review`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify({ sampleIds: ids, decision: decision }),
    });
    if (!r.ok) { alert(`Could not record the decision (${r.status}): ${await r.text()}`); return null; }
    return (await r.json()).decisions;
  }

  function show(grid, decisions) {
    let accepted = 0;
    for (const card of grid.querySelectorAll("li.card")) {
      const d = decisions[card.dataset.sample] || "";
      card.className = card.className.replace(/decision-\S+/, "") + ` decision-${d || "none"}`;
      card.querySelector(".accept").setAttribute("aria-pressed", String(d === "accepted"));
      card.querySelector(".reject").setAttribute("aria-pressed", String(d === "rejected"));
    }
    for (const d of Object.values(decisions)) if (d === "accepted") accepted++;
    const counter = document.getElementById("accepted-count");
    if (counter) counter.textContent = `${accepted} accepted`;
    grid.dataset.decided = String(Object.keys(decisions).length);
  }

  function proposals() {
    const grid = document.querySelector("ul.proposals");
    if (!grid) return;
    const job = grid.dataset.job;
    const cards = () => Array.from(grid.querySelectorAll("li.card"));
    const toggle = async (card, decision) => {
      const pressed = card.querySelector(decision === "accepted" ? ".accept" : ".reject").getAttribute("aria-pressed") === "true";
      const d = await decide(job, [Number(card.dataset.sample)], pressed ? null : decision);
      if (d) show(grid, d);
    };
    grid.addEventListener("click", (e) => {
      const card = e.target.closest("li.card");
      if (!card) return;
      if (e.target.closest(".accept")) toggle(card, "accepted");
      else if (e.target.closest(".reject")) toggle(card, "rejected");
      card.focus();
    });
    document.getElementById("accept-page").addEventListener("click", async () => {
      const d = await decide(job, cards().map((c) => Number(c.dataset.sample)), "accepted");
      if (d) show(grid, d);
    });
    const help = document.getElementById("help");
    document.getElementById("help-button").addEventListener("click", () => { help.hidden = !help.hidden; });
    if (cards().length) cards()[0].tabIndex = 0;
    document.addEventListener("keydown", (e) => {
      if (e.target.matches("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
      const all = cards();
      const current = document.activeElement && document.activeElement.closest && document.activeElement.closest("li.card");
      const i = current ? all.indexOf(current) : -1;
      const columns = getComputedStyle(grid).gridTemplateColumns.split(" ").length;
      const move = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns }[e.key];
      if (move !== undefined) {
        const next = all[Math.min(all.length - 1, Math.max(0, (i < 0 ? 0 : i + move)))];
        if (next) { next.focus(); e.preventDefault(); }
      } else if ((e.key === "a" || e.key === "r") && current) {
        toggle(current, e.key === "a" ? "accepted" : "rejected");
        const next = all[i + 1];
        if (next) next.focus();
      } else if (e.key === "?") {
        help.hidden = !help.hidden;
      }
    });
  }

  function task() {
    const box = document.getElementById("task");
    if (!box) return;
    const bar = document.getElementById("bar"), status = document.getElementById("status");
    const source = new EventSource(box.dataset.events);
    source.onmessage = (e) => {
      const t = JSON.parse(e.data);
      if (t.total) { bar.max = t.total; bar.value = t.done; }
      status.textContent = t.error ? `Failed: ${t.error}` : `${t.phase}: ${t.done} of ${t.total || "?"}`;
      if (t.finished) {
        source.close();
        if (t.jobId && !t.error) window.location = `/jobs/${t.jobId}?columns=${box.dataset.columns}`;
        else if (t.jobId) status.insertAdjacentHTML("beforeend", ` <a href="/jobs/${t.jobId}">See job ${t.jobId}</a>`);
      }
    };
  }

  document.addEventListener("DOMContentLoaded", () => { proposals(); task(); });
})();
