// labctl's live updates: one EventSource on the log; a page re-renders its [data-live] regions when an
// event it watches arrives (body[data-watch]: stream prefixes, "*" = all). No polling anywhere.
(() => {
  "use strict";
  const body = document.body;
  const watch = (body.dataset.watch || "").split(" ").filter(Boolean);
  let busy = false, again = false, timer = null;

  const wanted = (ev) => watch.some((w) => w === "*" || ev.stream.startsWith(w));

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const res = await fetch(location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" });
      if (res.ok) {
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const checked = new Set([...document.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value));
        for (const el of document.querySelectorAll("[data-live]")) {
          const fresh = el.id && doc.getElementById(el.id);
          if (fresh && fresh.innerHTML !== el.innerHTML) el.replaceWith(document.adoptNode(fresh));
        }
        for (const c of document.querySelectorAll("input[type=checkbox]")) c.checked = checked.has(c.value);
        body.dataset.refreshed = String(Date.now());
      }
    } catch (err) {
      console.warn("labctl: refresh failed", err);
    } finally {
      busy = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (timer === null) timer = setTimeout(() => { timer = null; refresh(); }, 60);
  }

  // The stream opens once the page has loaded: it resumes from the page's position, so nothing is
  // missed, and the page's load is not held up by a connection that never ends.
  function follow() {
    const after = body.dataset.position;
    const source = new EventSource("/api/stream" + (after ? "?after=" + encodeURIComponent(after) : ""));
    source.onopen = () => { body.dataset.live = "on"; };
    source.onerror = () => { body.dataset.live = "reconnecting"; };
    source.addEventListener("log", (msg) => {
      body.dataset.seen = msg.lastEventId;
      let ev;
      try { ev = JSON.parse(msg.data); } catch { return; }
      if (wanted(ev)) schedule();
    });
  }
  if (watch.length && window.EventSource) {
    if (document.readyState === "complete") follow();
    else window.addEventListener("load", follow, { once: true });
  }

  // A run's log: lines appended as the file grows, kept to the last 2000, scrolled to the end if it was there.
  const log = document.querySelector("pre[data-follow]");
  if (log && window.EventSource) {
    const lines = new EventSource(log.dataset.follow);
    lines.addEventListener("lines", (msg) => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(JSON.parse(msg.data).join("\n") + "\n"));
      const text = log.textContent.split("\n");
      if (text.length > 2000) log.textContent = text.slice(-2000).join("\n");
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
  }
})();
