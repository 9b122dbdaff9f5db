// tmlab's clickable token view (anywidget ES module, no build step).
// Every number comes from Python (traits `tokens`, `streaming`, `busy`, `note`, `stale`);
// a click on an alternative sends {type: "branch", index, alt} back to Python.

const CSS = `
.tmlab-tv { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; line-height: 2.1; outline: none; padding: 4px; }
.tmlab-tv:focus-visible { outline: 1px dotted #888; }
.tmlab-tv-tok { border-radius: 3px; padding: 1px 1px; margin: 0 1px 0 0; color: #000; white-space: pre;
  cursor: pointer; }
.tmlab-tv-tok.tmlab-tv-inherited { opacity: 0.55; }
.tmlab-tv-tok.tmlab-tv-selected { outline: 2px solid #1565c0; }
.tmlab-tv-tok:hover { outline: 1px solid #555; }
.tmlab-tv-stale .tmlab-tv-tok { opacity: 0.35; }
.tmlab-tv-stream { white-space: pre-wrap; background: #e3f2fd; }
.tmlab-tv-note { font-size: 12px; opacity: 0.75; line-height: 1.4; margin-top: 4px; }
.tmlab-tv-alts { position: fixed; z-index: 1000; background: #fff; color: #000;
  border: 1px solid #999; border-radius: 4px; padding: 4px; font-size: 12px;
  line-height: 1.35; box-shadow: 0 2px 8px rgba(0,0,0,.25); min-width: 14em; }
.tmlab-tv-alts .tmlab-tv-head { opacity: 0.7; margin: 0 2px 3px 2px; }
.tmlab-tv-alt { display: flex; width: 100%; gap: 1em; justify-content: space-between;
  border: 0; background: none; padding: 2px 4px; font: inherit; text-align: left;
  cursor: pointer; border-radius: 3px; }
.tmlab-tv-alt:hover, .tmlab-tv-alt.tmlab-tv-active { background: #e3f2fd; }
.tmlab-tv-alt.tmlab-tv-taken { font-weight: bold; }
.tmlab-tv-busy .tmlab-tv-alt { cursor: wait; opacity: 0.5; }
`;

function render({ model, el }) {
  const style = document.createElement("style");
  style.textContent = CSS;
  const root = document.createElement("div");
  root.className = "tmlab-tv";
  root.tabIndex = 0;
  el.append(style, root);

  let selected = -1;   // the token the keyboard is on
  let open = null;     // {index, popup, active}
  let closeTimer = null;

  function closePopup() {
    if (open) { open.popup.remove(); open = null; }
  }
  function cancelClose() {
    if (closeTimer) { clearTimeout(closeTimer); closeTimer = null; }
  }
  function closeSoon() {
    cancelClose();
    closeTimer = setTimeout(closePopup, 250);
  }
  function pick(index, alt) {
    if (model.get("busy")) return;
    closePopup();
    model.send({ type: "branch", index: index, alt: alt });
  }
  function openPopup(index) {
    cancelClose();
    if (open && open.index === index) return;
    closePopup();
    const tok = model.get("tokens")[index];
    const span = root.querySelector(`[data-index="${index}"]`);
    if (!tok || !span) return;
    const popup = document.createElement("div");
    popup.className = "tmlab-tv-alts";
    popup.setAttribute("role", "listbox");
    const head = document.createElement("div");
    head.className = "tmlab-tv-head";
    head.textContent = tok.alts.length
      ? `position ${tok.position}: p = ${tok.shown}; click an alternative to branch` +
        (tok.other !== null ? ` (not returned: ${tok.other.toFixed(4)})` : "")
      : `position ${tok.position}: p = ${tok.shown}; no alternatives returned (top_logprobs)`;
    popup.append(head);
    tok.alts.forEach((alt, k) => {
      const b = document.createElement("button");
      b.className = "tmlab-tv-alt" + (alt.taken ? " tmlab-tv-taken" : "");
      b.dataset.alt = String(k);
      b.dataset.token = alt.label;
      b.setAttribute("role", "option");
      const name = document.createElement("span");
      name.textContent = `${k + 1}. \u201c${alt.label}\u201d` + (alt.taken ? " (said)" : "");
      const p = document.createElement("span");
      p.textContent = `p = ${alt.shown}`;
      b.append(name, p);
      b.addEventListener("click", (e) => { e.stopPropagation(); pick(index, k); });
      popup.append(b);
    });
    popup.addEventListener("mouseenter", cancelClose);
    popup.addEventListener("mouseleave", closeSoon);
    document.body.append(popup);
    const r = span.getBoundingClientRect();
    const h = popup.offsetHeight, w = popup.offsetWidth;
    const below = r.bottom + 2 + h <= window.innerHeight;
    popup.style.top = `${below ? r.bottom + 2 : Math.max(0, r.top - 2 - h)}px`;
    popup.style.left = `${Math.max(0, Math.min(r.left, window.innerWidth - w - 4))}px`;
    open = { index: index, popup: popup, active: -1 };
  }
  function setActive(k) {
    if (!open) return;
    const buttons = open.popup.querySelectorAll(".tmlab-tv-alt");
    if (!buttons.length) return;
    open.active = (k + buttons.length) % buttons.length;
    buttons.forEach((b, i) => b.classList.toggle("tmlab-tv-active", i === open.active));
  }
  function select(i) {
    const n = model.get("tokens").length;
    if (!n) return;
    selected = Math.max(0, Math.min(n - 1, i));
    root.querySelectorAll(".tmlab-tv-tok").forEach((s) =>
      s.classList.toggle("tmlab-tv-selected", Number(s.dataset.index) === selected));
    closePopup();
  }

  function draw() {
    closePopup();
    root.replaceChildren();
    root.classList.toggle("tmlab-tv-stale", model.get("stale"));
    root.classList.toggle("tmlab-tv-busy", model.get("busy"));
    const tokens = model.get("tokens");
    tokens.forEach((tok, i) => {
      const s = document.createElement("span");
      s.className = "tmlab-tv-tok" + (tok.inherited ? " tmlab-tv-inherited" : "") +
        (i === selected ? " tmlab-tv-selected" : "");
      s.dataset.index = String(i);
      s.dataset.position = String(tok.position);
      s.style.background = tok.colour;
      s.textContent = tok.label;
      s.addEventListener("mouseenter", () => openPopup(i));
      s.addEventListener("mouseleave", closeSoon);
      s.addEventListener("click", () => { selected = i; openPopup(i); });
      root.append(s);
      if (tok.newline) root.append(document.createElement("br"));
    });
    const streaming = model.get("streaming");
    if (streaming || model.get("busy")) {
      const s = document.createElement("span");
      s.className = "tmlab-tv-stream";
      s.textContent = streaming + (model.get("busy") ? " \u258c" : "");
      root.append(s);
    }
    const note = model.get("note");
    if (note) {
      const n = document.createElement("div");
      n.className = "tmlab-tv-note";
      n.textContent = note;
      root.append(n);
    }
  }

  root.addEventListener("keydown", (e) => {
    const n = model.get("tokens").length;
    if (!n) return;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      setActive(open.active + (e.key === "ArrowDown" ? 1 : -1));
    } else if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      select(selected < 0 ? 0 : selected + (e.key === "ArrowRight" ? 1 : -1));
    } else if (e.key === "Enter") {
      if (open && open.active >= 0) pick(open.index, open.active);
      else if (selected >= 0) { openPopup(selected); setActive(0); }
    } else if (e.key === "Escape") {
      closePopup();
    } else {
      return;
    }
    e.preventDefault();
    e.stopPropagation();  // arrows and Enter must not move JupyterLab's cell selection
  });

  for (const name of ["tokens", "streaming", "busy", "note", "stale"]) {
    model.on(`change:${name}`, draw);
  }
  draw();
  return () => { closePopup(); cancelClose(); };
}

export default { render };
