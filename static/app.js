// Small enhancements for the server-rendered pages; everything works without this file.
"use strict";

// Show <time datetime="ms"> in the reader's own time zone.
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach((el) => {
    const ms = Number(el.getAttribute("datetime"));
    if (Number.isFinite(ms) && ms > 0) {
      el.title = el.textContent;
      el.textContent = new Date(ms).toLocaleString();
    }
  });
}
localTimes(document);

// Live pages (body[data-live]) re-render their <main> from the server when /ws reports a change
// to nodes, resources or the ledger. The server stays the only renderer.
(function live() {
  const main = document.querySelector("main");
  if (!main || !document.body.hasAttribute("data-live") || !("WebSocket" in window)) return;
  let queued = false;
  const refresh = () => {
    if (queued) return;
    queued = true;
    setTimeout(async () => {
      queued = false;
      const res = await fetch(location.href, { credentials: "same-origin" });
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.querySelector("main");
      if (fresh) {
        main.innerHTML = fresh.innerHTML;
        localTimes(main);
      }
    }, 400);
  };
  const connect = () => {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", channels: ["nodes", "resources", "ledger", "builds"] }));
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type !== "subscribed" && msg.type !== "error") refresh();
    };
    ws.onclose = () => setTimeout(connect, 3000);
  };
  connect();
})();
