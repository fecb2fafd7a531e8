// Keeps the dashboard current without reloading: every second it fetches /dashboard/data.json (the
// view of /stats.json with the display text of every cell) and copies the
// preformatted cell texts (`display`) into the server-rendered page. All formatting happens on the
// server, so this file only moves strings and class names around.
"use strict";

(function () {
  const PERIOD_MS = 1000;
  const live = document.getElementById("live");
  const rows = document.getElementById("rows");
  const frontend = document.getElementById("frontend");
  const summary = document.getElementById("summary");
  const events = document.getElementById("events");
  const pictures = document.getElementById("pictures");
  let lastPictures = null;
  let lastEventKey = null;
  let failures = 0;

  function fill(container, cells, attr) {
    for (const el of container.querySelectorAll("[" + attr + "]")) {
      const key = el.getAttribute(attr);
      const c = cells[key] || { text: "" };
      if (el.textContent !== c.text) el.textContent = c.text;
      if (c.title) el.title = c.title;
      else el.removeAttribute("title");
    }
  }

  function updateRows(view) {
    for (const s of view.servers) {
      const tr = rows.querySelector('tr[data-server="' + CSS.escape(s.name) + '"]');
      if (!tr) continue;
      const cls = "server tone-" + s.tone + (s.routed_primary ? " routed" : "");
      if (tr.className !== cls) tr.className = cls;
      tr.dataset.tone = s.tone;
      tr.dataset.role = s.role;
      fill(tr, s.display, "data-f");
    }
    fill(frontend, view.frontend.display, "data-f");
  }

  function clock(epoch) {
    const iso = new Date(epoch * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    return [iso.slice(11, 19), iso];
  }

  function updateEvents(list) {
    const last = list[list.length - 1];
    const key = list.length + ":" + (last ? last.at + last.message : "");
    if (key === lastEventKey) return;
    lastEventKey = key;
    const frag = document.createDocumentFragment();
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i];
      const li = document.createElement("li");
      li.className = "ev ev-" + e.kind;
      const [time, full] = clock(e.at);
      const t = document.createElement("time");
      t.dateTime = full;
      t.textContent = time;
      // The event's mark on the hour's timeline (the server names it the same way).
      const a = document.createElement("a");
      a.href = "#t" + Math.round(e.at * 1000);
      a.title = full + ": see it on the timeline";
      a.append(t);
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = e.kind.replace(/_/g, " ");
      const msg = document.createElement("span");
      msg.className = "msg";
      msg.textContent = e.message;
      li.append(a, " ", kind, " ", msg);
      frag.append(li);
    }
    if (!list.length) {
      const li = document.createElement("li");
      li.className = "ev none";
      li.textContent = "No events yet.";
      frag.append(li);
    }
    events.replaceChildren(frag);
  }

  function apply(view) {
    fill(document, view.display, "data-p");
    summary.className = "summary tone-" + (view.primary ? "primary" : "down");
    updateRows(view);
    updateEvents(view.events);
    // Built and escaped by the proxy (dashboard::listeners_html).
    const listeners = document.getElementById("listeners");
    if (listeners && typeof view.listeners_html === "string") listeners.innerHTML = view.listeners_html;
    document.title = view.proxy + (view.primary ? " · " + view.primary : " · no primary") + " · patroni-proxy";
  }

  // The mark an event link points at, highlighted (again after each redraw of the pictures).
  function highlight() {
    const id = location.hash.slice(1);
    if (!/^t\d+$/.test(id)) return null;
    const mark = document.getElementById(id);
    if (!mark) return null;
    for (const m of document.querySelectorAll(".mk.hit")) m.classList.remove("hit");
    mark.classList.add("hit");
    return mark;
  }

  // Following an event link shows the hour, where the marks with ids are.
  function showTarget() {
    if (highlight()) document.getElementById("w1h").checked = true;
  }

  async function updatePictures() {
    const r = await fetch("/dashboard/pictures", { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const html = await r.text();
    if (html === lastPictures) return;
    lastPictures = html;
    pictures.innerHTML = html;
    highlight();
  }

  async function tick() {
    try {
      const r = await fetch("/dashboard/data.json", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      apply(await r.json());
      await updatePictures();
      failures = 0;
      live.dataset.state = "live";
      live.textContent = "live · updated " + clock(Date.now() / 1000)[0] + " UTC";
    } catch (e) {
      // One miss is normal (the listener recycles old connections); two in a row are not.
      failures += 1;
      if (failures >= 2) {
        live.dataset.state = "stale";
        live.textContent = "stale · cannot reach the proxy (" + e.message + "), retrying";
      }
    } finally {
      setTimeout(tick, PERIOD_MS);
    }
  }

  pictures.parentElement.classList.add("js");
  window.addEventListener("hashchange", showTarget);
  // Show the hour at once on a click (the hash may not change: the same link twice).
  events.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest('a[href^="#t"]');
    if (a) setTimeout(showTarget, 0);
  });
  showTarget();
  live.dataset.state = "live";
  live.textContent = "live";
  tick();
})();
