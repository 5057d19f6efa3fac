// Small enhancements for the server-rendered pages; everything works without this file.
"use strict";

// Show <time datetime="ms"> in the reader's own time zone.
document.querySelectorAll("time[datetime]").forEach((el) => {
  const ms = Number(el.getAttribute("datetime"));
  if (Number.isFinite(ms) && ms > 0) {
    el.title = el.textContent;
    el.textContent = new Date(ms).toLocaleString();
  }
});
