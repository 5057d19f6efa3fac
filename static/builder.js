// The configuration builder (/builder): drag nodes and their parts into zones (pointer events, so
// mouse, pen, touch and WebDriver pointer actions all work), or use each part's "+" button from the
// keyboard; chips hold the amounts; the summary and the estimate follow every change. Everything
// goes through the JSON API with the session's CSRF token. The server rendered the pool; this
// file renders only chips and summary figures.
"use strict";

(function builder() {
  const root = document.querySelector("[data-builder]");
  if (!root) return;
  root.hidden = false;
  document.querySelectorAll("[data-fallback]").forEach((el) => { el.hidden = true; });

  const $ = (sel, el = root) => el.querySelector(sel);
  const $$ = (sel, el = root) => Array.from(el.querySelectorAll(sel));
  const csrf = root.dataset.csrf || "";
  const localId = root.dataset.localId;
  const latency = JSON.parse(root.dataset.latency || "{}");
  const pool = {
    cores: Number(root.dataset.poolCores) || 0,
    memory: Number(root.dataset.poolMemoryGb) || 0,
    disk: Number(root.dataset.poolDiskGb) || 0,
  };
  const zones = ["cpu", "memory", "storage", "tools"];
  const chips = { cpu: [], memory: [], storage: [], tools: [] };
  const state = { project: root.dataset.project || "", projectTools: [], editingId: null };

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    return { ok: res.ok, status: res.status, body: data };
  }
  const errorText = (r) => (r.body && r.body.error && r.body.error.message) || ("the node answered " + r.status);

  // ---- the pool's cards ----
  const facts = (part) => Object.fromEntries((part.dataset.facts || "").split(";").filter(Boolean).map((kv) => kv.split("=")));
  const card = (nodeId) => $(`.card[data-node-id="${nodeId}"]`);
  const cardOf = (el) => el.closest(".card");
  const online = (c) => c && c.dataset.status !== "offline";
  const partOf = (c, key) => c && $$(".part", c).find((p) => p.dataset.resource === key);
  const nodeTools = (c) => $$(".part", c).map((p) => p.dataset.resource).filter((k) => /^(tool|runtime):/.test(k)).map((k) => k.split(":")[1]);

  // ---- chips ----
  function chipFor(zone, c, part) {
    const node = { nodeId: c.dataset.nodeId, node: c.dataset.node };
    if (zone === "cpu") {
      const p = partOf(c, "cpu");
      if (!p) return null;
      const max = Number(facts(p).cores) || 1;
      const free = Number($("[data-free-cores]", c)?.dataset.freeCores) || max;
      return { ...node, zone, key: "cpu", amount: Math.max(1, Math.min(free, max)), min: 1, max, step: 1, unit: "cores" };
    }
    if (zone === "memory") {
      const p = partOf(c, "memory");
      if (!p) return null;
      const max = Number(facts(p).gb) || 1;
      return { ...node, zone, key: "memory", amount: Math.min(4, Math.floor(max * 2) / 2) || 0.5, min: 0.5, max, step: 0.5, unit: "GB" };
    }
    if (zone === "storage") {
      let p = part && part.dataset.resource.startsWith("storage:") ? part : null;
      if (!p) p = $$(".part", c).filter((x) => x.dataset.resource.startsWith("storage:")).sort((a, b) => Number(facts(b).free_gb) - Number(facts(a).free_gb))[0];
      if (!p) return null;
      const max = Number(facts(p).free_gb) || 1;
      return { ...node, zone, key: p.dataset.resource, path: p.dataset.resource.slice("storage:".length), amount: Math.min(10, Math.floor(max)) || 1, min: 1, max, step: 1, unit: "GB" };
    }
    if (zone === "tools") {
      const p = part && /^(tool|runtime):/.test(part.dataset.resource) ? part : null;
      if (!p) return null;
      const [kind, name] = p.dataset.resource.split(":");
      return { ...node, zone, key: p.dataset.resource, kind, name, version: facts(p).version || "" };
    }
    return null;
  }

  function add(zone, c, part) {
    if (!online(c)) return say(`${c.dataset.node} is offline.`);
    let wanted;
    if (zone === "tools" && !(part && /^(tool|runtime):/.test(part.dataset.resource))) {
      // A whole card in the tools zone: the project's tools this node has.
      const have = nodeTools(c).filter((t) => state.projectTools.includes(t));
      if (!have.length) return say(state.projectTools.length ? `${c.dataset.node} has none of the project's tools.` : "Drop a tool or runtime from a card, or choose a project first.");
      wanted = have.map((t) => chipFor("tools", c, partOf(c, `tool:${t}`) || partOf(c, `runtime:${t}`)));
    } else {
      wanted = [chipFor(zone, c, part)];
    }
    for (const chip of wanted.filter(Boolean)) {
      if (!chips[zone].some((x) => x.nodeId === chip.nodeId && x.key === chip.key)) chips[zone].push(chip);
    }
    say("");
    changed(true);
  }

  function renderChips() {
    for (const zone of zones) {
      const list = $(`[data-chips="${zone}"]`);
      list.replaceChildren(...chips[zone].map((chip, i) => {
        const li = document.createElement("li");
        li.className = "chip";
        li.dataset.chip = `${zone}:${chip.node}`;
        li.dataset.nodeId = chip.nodeId;
        li.dataset.index = String(i);
        if (!online(card(chip.nodeId))) li.classList.add("flagged");
        const label = document.createElement("span");
        label.textContent = zone === "tools" ? `${chip.name} ${chip.version} on ${chip.node}` : zone === "storage" ? `${chip.node} ${chip.path}` : chip.node;
        li.append(label);
        if (chip.unit) {
          const input = document.createElement("input");
          Object.assign(input, { type: "number", min: chip.min, max: chip.max, step: chip.step, value: chip.draft ?? chip.amount });
          input.dataset.amount = "";
          input.setAttribute("aria-label", `${chip.unit} from ${chip.node}`);
          // What the user typed stays, valid or not; only a valid amount counts.
          const check = () => {
            const v = Number(input.value);
            const ok = input.value !== "" && Number.isFinite(v) && v >= chip.min && v <= chip.max;
            li.classList.toggle("invalid", !ok);
            li.title = ok ? "" : `between ${chip.min} and ${chip.max} ${chip.unit}`;
            chip.draft = ok ? undefined : input.value;
            return ok ? v : null;
          };
          if (chip.draft !== undefined) check();
          input.addEventListener("input", () => {
            const v = check();
            if (v !== null) { chip.amount = v; changed(false); }
          });
          const unit = document.createElement("span");
          unit.textContent = ` ${chip.unit} (max ${chip.max})`;
          li.append(input, unit);
        }
        const remove = document.createElement("button");
        remove.type = "button";
        remove.dataset.remove = "";
        remove.textContent = "×";
        remove.setAttribute("aria-label", `Remove ${li.dataset.chip}`);
        remove.addEventListener("click", () => { chips[zone].splice(i, 1); changed(true); });
        li.append(remove);
        return li;
      }));
      $(`[data-zone="${zone}"]`).classList.toggle("filled", chips[zone].length > 0);
    }
  }

  // ---- the configuration the chips describe (plan §5.1 / Appendix B) ----
  function configJson() {
    const sum = (list) => list.reduce((n, c) => n + c.amount, 0);
    const uniq = (list) => [...new Set(list)];
    const name = ($("[data-config-name]").value || "").trim();
    return {
      name: name || "unnamed",
      description: "Made in the builder",
      resources: {
        cpu: { cores: sum(chips.cpu), node_allocations: chips.cpu.length ? chips.cpu.map((c) => ({ node_id: c.nodeId, cores: c.amount })) : null, priority: "normal" },
        memory: { gb: sum(chips.memory), node_allocations: chips.memory.length ? chips.memory.map((c) => ({ node_id: c.nodeId, gb: c.amount })) : null, priority: "normal" },
        storage: { volumes: chips.storage.map((c) => ({ node_id: c.nodeId, path: c.path, purpose: "build", size_gb: c.amount })), min_class: "any" },
        tools: uniq(chips.tools.filter((c) => c.kind === "tool").map((c) => c.name)),
        runtimes: uniq(chips.tools.filter((c) => c.kind === "runtime").map((c) => c.name)),
      },
    };
  }

  // ---- summary ----
  function renderSummary() {
    const sum = (list) => list.reduce((n, c) => n + c.amount, 0);
    const figures = { cores: [sum(chips.cpu), pool.cores], memory: [sum(chips.memory), pool.memory], disk: [sum(chips.storage), pool.disk] };
    for (const [what, [value, total]] of Object.entries(figures)) {
      $(`[data-total="${what}"]`).dataset.value = String(value);
      $(`[data-bar-fill="${what}"]`).setAttribute("width", String(total > 0 ? Math.round(200 * Math.min(1, value / total)) : 0));
      $(`[data-total-text="${what}"]`).textContent = `${value} of ${total}${what === "cores" ? "" : " GB"}`;
    }
    const ids = [...new Set(zones.flatMap((z) => chips[z].map((c) => c.nodeId)))];
    const pairs = [];
    for (let i = 0; i < ids.length; i++) {
      for (let j = i + 1; j < ids.length; j++) {
        const ms = (latency[ids[i]] || {})[ids[j]] ?? (latency[ids[j]] || {})[ids[i]];
        const names = [ids[i], ids[j]].map((id) => card(id)?.dataset.node || id);
        pairs.push(`${names[0]}–${names[1]} ${ms === undefined ? "not measured" : ms.toFixed(2) + " ms"}`);
      }
    }
    $("[data-latency-out]").textContent = pairs.length ? `Latency: ${pairs.join(", ")}` : "Latency: choose two or more nodes.";
    const have = new Set(ids.flatMap((id) => nodeTools(card(id) || root)));
    const missing = state.projectTools.filter((t) => !have.has(t));
    const warn = $("[data-missing-tools]");
    warn.hidden = !(missing.length && ids.length);
    warn.textContent = missing.length ? `No selected node has ${missing.join(", ")}, which ${state.project} needs.` : "";
    warn.dataset.missing = missing.join(",");
  }

  // ---- estimate ----
  let estimateTimer = null;
  let estimateSeq = 0;
  const fmt = (ms) => (ms >= 60000 ? `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s` : ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${ms} ms`);
  function setEstimate(ms, text) {
    const el = $("[data-estimate-ms]");
    el.dataset.estimateMs = ms === null ? "" : String(ms);
    // How long after the last change the estimate showed (what "live" means, measured).
    el.dataset.latencyMs = String(Math.round(performance.now() - changedAt));
    $("[data-estimate-text]").textContent = text;
  }
  async function estimate() {
    const seq = ++estimateSeq;
    if (!state.project) return setEstimate(null, "Estimate: choose a project.");
    if (!chips.cpu.length) return setEstimate(null, "Estimate: add CPU from at least one node.");
    const r = await api("POST", "/api/build/estimate", { project: state.project, config: configJson() });
    if (seq !== estimateSeq) return;
    if (!r.ok) { setEstimate(null, "Estimate unavailable."); return problem(errorText(r)); }
    const e = r.body;
    const confidence = e.confidence > 0.8 ? "high" : e.confidence > 0.5 ? "medium" : "low";
    setEstimate(e.total_duration_ms, `Estimate: ${fmt(e.total_duration_ms)} (${fmt(e.low_ms)}–${fmt(e.high_ms)}, ${confidence} confidence) on ${e.cores} cores`);
  }

  let changedAt = 0;
  function changed(structure) {
    changedAt = performance.now();
    if (structure) renderChips();
    renderSummary();
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(estimate, 100);
  }

  // ---- messages and problems pointing at chips or fields ----
  function say(text, ok = false) {
    const el = $("[data-message]");
    el.textContent = text;
    el.hidden = !text;
    el.classList.toggle("error", !ok);
    el.classList.toggle("ok", ok);
  }
  function problem(message) {
    say(message);
    $$(".chip.invalid").forEach((c) => c.classList.remove("invalid"));
    $("[data-config-name]").classList.remove("invalid");
    const m = /resources\.(cpu|memory)\.node_allocations\[(\d+)\]|resources\.storage\.volumes\[(\d+)\]/.exec(message);
    if (m) {
      const zone = m[1] || "storage";
      const chip = $$(`[data-chips="${zone}"] .chip`)[Number(m[2] ?? m[3])];
      if (chip) { chip.classList.add("invalid"); chip.title = message; }
    } else if (/^name\b/.test(message)) {
      $("[data-config-name]").classList.add("invalid");
    }
  }

  // ---- filling the canvas from a configuration (a template, or one being edited) ----
  function fill(cfg) {
    zones.forEach((z) => { chips[z] = []; });
    const res = cfg.resources || {};
    const idOf = (id) => (id === "local" ? localId : id);
    const onlineCards = $$(".card").filter(online);
    const cpu = res.cpu || {};
    if (cpu.node_allocations && cpu.node_allocations.length) {
      for (const a of cpu.node_allocations) {
        const c = card(idOf(a.node_id));
        const chip = c && chipFor("cpu", c);
        if (chip) { if (a.cores > 0) chip.amount = Math.min(a.cores, chip.max); else chip.amount = chip.max; chips.cpu.push(chip); }
      }
    } else {
      const targets = cpu.cores > 0 ? onlineCards.filter((c) => c.dataset.nodeId === localId) : onlineCards;
      for (const c of targets) {
        const chip = chipFor("cpu", c);
        if (chip) { chip.amount = cpu.cores > 0 ? Math.min(cpu.cores, chip.max) : chip.max; chips.cpu.push(chip); }
      }
    }
    for (const a of (res.memory && res.memory.node_allocations) || []) {
      const c = card(idOf(a.node_id));
      const chip = c && chipFor("memory", c);
      if (chip) { chip.amount = Math.min(a.gb, chip.max); chips.memory.push(chip); }
    }
    for (const v of (res.storage && res.storage.volumes) || []) {
      const c = card(idOf(v.node_id));
      const chip = c && chipFor("storage", c, partOf(c, `storage:${v.path}`));
      if (chip) { chip.amount = Math.min(v.size_gb || chip.amount, chip.max); chips.storage.push(chip); }
    }
    const toolName = (t) => (typeof t === "string" ? t.split(/[<>=@ ]/)[0] : t.name);
    for (const [kind, list] of [["tool", res.tools || []], ["runtime", res.runtimes || []]]) {
      for (const t of list) {
        const c = onlineCards.find((x) => partOf(x, `${kind}:${toolName(t)}`));
        const chip = c && chipFor("tools", c, partOf(c, `${kind}:${toolName(t)}`));
        if (chip) chips.tools.push(chip);
      }
    }
    if (cfg.name) $("[data-config-name]").value = cfg.name;
    changed(true);
  }

  // ---- dragging with pointer events ----
  let drag = null;
  function onPointerDown(ev) {
    if (ev.button !== 0 || ev.target.closest("button, input, select, a")) return;
    const c = cardOf(ev.target);
    if (!c || !online(c)) return;
    drag = { card: c, part: ev.target.closest(".part"), x: ev.clientX, y: ev.clientY, ghost: null };
    ev.preventDefault();
  }
  function zoneAt(x, y) {
    const el = document.elementFromPoint(x, y);
    return el && el.closest("[data-zone]");
  }
  function onPointerMove(ev) {
    if (!drag) return;
    if (!drag.ghost) {
      if (Math.abs(ev.clientX - drag.x) + Math.abs(ev.clientY - drag.y) < 4) return;
      drag.ghost = document.createElement("div");
      drag.ghost.className = "drag-ghost";
      drag.ghost.textContent = drag.part ? `${drag.card.dataset.node} · ${drag.part.dataset.resource}` : drag.card.dataset.node;
      document.body.append(drag.ghost);
      drag.card.classList.add("dragging");
    }
    drag.ghost.style.left = `${ev.clientX + 8}px`;
    drag.ghost.style.top = `${ev.clientY + 8}px`;
    $$("[data-zone]").forEach((z) => z.classList.toggle("over", z === zoneAt(ev.clientX, ev.clientY)));
  }
  function onPointerUp(ev) {
    if (!drag) return;
    const { card: c, part, ghost } = drag;
    drag = null;
    c.classList.remove("dragging");
    $$("[data-zone]").forEach((z) => z.classList.remove("over"));
    if (!ghost) return;
    ghost.remove();
    const zone = zoneAt(ev.clientX, ev.clientY);
    if (zone) add(zone.dataset.zone, c, part);
  }
  root.addEventListener("pointerdown", onPointerDown);
  document.addEventListener("pointermove", onPointerMove);
  document.addEventListener("pointerup", onPointerUp);

  // ---- keyboard (and any pointer): each part's "+" button ----
  root.addEventListener("click", (ev) => {
    const button = ev.target.closest("[data-add]");
    if (!button) return;
    const part = button.closest(".part");
    add(button.dataset.add, cardOf(button), part);
  });

  // ---- actions ----
  // A chip whose amount is out of its node's bounds stops saving and running, and says which.
  function invalidChip() {
    const bad = $(".chip.invalid");
    if (bad) say(`Fix the marked chip ${bad.dataset.chip}: ${bad.title}.`);
    return Boolean(bad);
  }
  async function saveConfig() {
    if (invalidChip()) return null;
    const body = configJson();
    if (!($("[data-config-name]").value || "").trim()) { problem("name: give the configuration a name"); return null; }
    const r = state.editingId ? await api("PUT", `/api/configs/${encodeURIComponent(state.editingId)}`, body) : await api("POST", "/api/configs", body);
    if (!r.ok) { problem(errorText(r)); return null; }
    const id = (r.body && r.body.id) || state.editingId;
    state.editingId = id;
    say("Saved.", true);
    const done = $("[data-message]");
    done.replaceChildren("Saved as ", Object.assign(document.createElement("a"), { href: `/configs/${id}`, textContent: body.name }), ".");
    done.dataset.savedId = id;
    return id;
  }
  async function saveTemplate() {
    const id = await saveConfig();
    if (!id) return;
    const name = `${configJson().name} template`;
    const r = await api("POST", "/api/templates", { config_id: id, name, description: "Made in the builder" });
    if (!r.ok) return problem(errorText(r));
    say(`Saved the template "${name}".`, true);
    loadTemplates();
  }
  // The download's link stays (hidden) until the next export replaces it, and carries the
  // document in `data-exported`, so a script or a test can read what was exported (the page's
  // CSP lets nothing fetch a blob: URL).
  function exportJson() {
    const before = document.querySelector("a[data-exported]");
    if (before) { URL.revokeObjectURL(before.href); before.remove(); }
    const text = JSON.stringify(configJson(), null, 2);
    const blob = new Blob([text], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${configJson().name}.json`;
    a.dataset.exported = text;
    a.hidden = true;
    document.body.append(a);
    a.click();
  }
  async function run() {
    if (invalidChip()) return;
    if (!state.project) return problem("project: choose a project to build");
    const r = await api("POST", "/api/build", { project: state.project, config: configJson() });
    if (!r.ok) return problem(errorText(r));
    location.href = `/builds/${encodeURIComponent(r.body.build_id)}`;
  }
  const actions = { "save-config": saveConfig, "save-template": saveTemplate, export: exportJson, run };
  $$("[data-action]").forEach((b) => b.addEventListener("click", () => actions[b.dataset.action]()));
  $("[data-config-name]").addEventListener("input", () => changed(false));

  // ---- projects and templates ----
  async function chooseProject(name) {
    state.project = name;
    state.projectTools = [];
    if (name) {
      const r = await api("GET", `/api/projects/${encodeURIComponent(name)}`);
      if (r.ok) state.projectTools = r.body.tools || [];
    }
    changed(false);
  }
  async function loadProjects() {
    const select = $("[data-project-select]");
    const r = await api("GET", "/api/projects");
    const names = r.ok ? (r.body.projects || []).map((p) => p.name) : [];
    select.replaceChildren(new Option("(none)", ""), ...names.map((n) => new Option(n, n)));
    if (!names.length) { select.disabled = true; return; }
    const wanted = names.includes(state.project) ? state.project : names[0];
    select.value = wanted;
    select.addEventListener("change", () => chooseProject(select.value));
    await chooseProject(wanted);
  }
  let templates = [];
  async function loadTemplates() {
    const select = $("[data-template-select]");
    const r = await api("GET", "/api/templates");
    templates = r.ok ? (Array.isArray(r.body) ? r.body : r.body.templates || []) : [];
    select.replaceChildren(new Option("(none)", ""), ...templates.map((t) => new Option(t.name, t.id)));
  }
  $("[data-template-select]").addEventListener("change", (ev) => {
    const t = templates.find((x) => x.id === ev.target.value);
    if (t) fill({ ...t.config, name: $("[data-config-name]").value || "" });
  });

  // ---- live: nodes going offline, free cores ----
  let refreshQueued = false;
  async function refreshNodes() {
    refreshQueued = false;
    const r = await api("GET", "/api/pool/nodes");
    if (!r.ok) return;
    for (const n of (Array.isArray(r.body) ? r.body : r.body.nodes || [])) {
      const c = card(n.id);
      if (!c) continue;
      c.dataset.status = n.status;
      c.classList.toggle("offline", n.status === "offline");
      if (n.status === "offline") c.setAttribute("aria-disabled", "true"); else c.removeAttribute("aria-disabled");
      const status = $(".status", c);
      if (status) { status.className = `status ${n.status}`; status.textContent = ` ${n.status}`; }
      const free = $("[data-free-cores]", c);
      if (free) { free.dataset.freeCores = String(n.cores_available); free.textContent = String(n.cores_available); }
    }
    $$(".chip").forEach((chip) => chip.classList.toggle("flagged", !online(card(chip.dataset.nodeId))));
    renderSummary();
  }
  (function live() {
    if (!("WebSocket" in window)) return;
    const connect = () => {
      const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
      ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", channels: ["nodes", "resources"] }));
      ws.onmessage = () => {
        if (refreshQueued) return;
        refreshQueued = true;
        setTimeout(refreshNodes, 250);
      };
      ws.onclose = () => setTimeout(connect, 3000);
    };
    connect();
  })();

  // ---- start ----
  renderChips();
  renderSummary();
  if (root.dataset.config) {
    const cfg = JSON.parse(root.dataset.config);
    state.editingId = cfg.id || null;
    fill(cfg);
  }
  loadTemplates();
  loadProjects();
})();
