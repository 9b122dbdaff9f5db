// tmlab's Stepper (anywidget ES module, no build step).
// Every number comes from Python (traits `stages`, `columns`, `view_label`, ...); the sliders
// set traits; buttons, candidate clicks and keys send small messages {type, ...}.

const CSS = `
.tmlab-st { font-family: system-ui, sans-serif; font-size: 13px; outline: none; padding: 4px; }
.tmlab-st:focus-visible { outline: 1px dotted #888; }
.tmlab-st-text { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
  background: #fafafa; border: 1px solid #ddd; border-radius: 4px; padding: 6px; min-height: 2em; }
.tmlab-st-prompt { opacity: 0.7; margin-bottom: 4px; }
.tmlab-st-next { background: #e3f2fd; border-bottom: 2px solid #1565c0; }
.tmlab-st-bar { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 6px 0; }
.tmlab-st-bar label { display: inline-flex; gap: 4px; align-items: center; }
.tmlab-st-bar input[type=range] { width: 110px; }
.tmlab-st-label { font-size: 12px; margin: 4px 0; }
.tmlab-st-label.tmlab-st-exact { color: #1b5e20; }
.tmlab-st-label.tmlab-st-approx { color: #b45309; }
.tmlab-st-status { font-size: 12px; opacity: 0.75; }
.tmlab-st-grid { border-collapse: collapse; font-size: 11px; }
.tmlab-st-grid th, .tmlab-st-grid td { padding: 1px 3px; text-align: center; vertical-align: bottom; }
.tmlab-st-grid th.tmlab-st-stage { text-align: right; white-space: nowrap; font-weight: normal; }
.tmlab-st-cand { font-family: ui-monospace, Menlo, monospace; cursor: pointer; border: 1px solid #bbb;
  border-radius: 3px; background: #fff; padding: 1px 3px; white-space: pre; font-size: 11px; }
.tmlab-st-cand:hover { background: #e3f2fd; }
.tmlab-st-cand.tmlab-st-drawn { border-color: #1565c0; font-weight: bold; }
.tmlab-st-cell { width: 38px; }
.tmlab-st-b { background: #1565c0; width: 22px; margin: 0 auto; min-height: 1px; }
.tmlab-st-cut .tmlab-st-b { background: #ccc; }
.tmlab-st-cut { color: #999; }
.tmlab-st-off { opacity: 0.45; }
.tmlab-st-why { font-size: 9px; color: #999; }
.tmlab-st-hes { font-size: 12px; margin-top: 6px; }
.tmlab-st-hes button { font-size: 11px; margin: 1px; cursor: pointer; }
.tmlab-st-busy .tmlab-st-cand, .tmlab-st-busy .tmlab-st-act { opacity: 0.5; cursor: wait; }
`;

const SLIDERS = [
  ["temperature", 0, 2, 0.05],
  ["top_k", 0, 100, 1],
  ["top_p", 0, 1, 0.01],
  ["min_p", 0, 1, 0.01],
];

function el_(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el }) {
  const style = el_("style");
  style.textContent = CSS;
  const root = el_("div", "tmlab-st");
  root.tabIndex = 0;
  el.append(style, root);

  const prompt = el_("div", "tmlab-st-prompt");
  const text = el_("div", "tmlab-st-text");
  const bar = el_("div", "tmlab-st-bar");
  const label = el_("div", "tmlab-st-label");
  const status = el_("div", "tmlab-st-status");
  const gridBox = el_("div");
  const hes = el_("div", "tmlab-st-hes");
  root.append(prompt, text, bar, label, gridBox, status, hes);

  function send(msg) { model.send(msg); }
  function button(name, title, msg) {
    const b = el_("button", "tmlab-st-act", name);
    b.title = title;
    b.dataset.action = msg.type;
    b.addEventListener("click", () => send(msg));
    return b;
  }
  const sampleB = button("Sample", "the server draws (space)", { type: "sample" });
  const backB = button("Back", "undo the last token (backspace)", { type: "back" });
  const playB = button("Play", "step on its own", { type: "play" });
  const stopB = button("Stop", "stop Play", { type: "stop" });
  const rate = el_("input");
  rate.type = "number"; rate.min = "0.2"; rate.max = "20"; rate.step = "0.5"; rate.style.width = "4em";
  rate.title = "steps per second";
  rate.addEventListener("change", () => { model.set("rate", Number(rate.value)); model.save_changes(); });
  bar.append(sampleB, backB, playB, stopB, rate, el_("span", "", "/s"));

  const inputs = {};
  for (const [name, lo, hi, step] of SLIDERS) {
    const lab = el_("label");
    const inp = el_("input");
    inp.type = "range"; inp.min = lo; inp.max = hi; inp.step = step;
    inp.dataset.param = name;
    const out = el_("span", "tmlab-st-val");
    inp.addEventListener("input", () => {
      const v = name === "top_k" ? parseInt(inp.value, 10) : Number(inp.value);
      out.textContent = String(v);
      model.set(name, v);
      model.save_changes();
    });
    lab.append(el_("span", "", name), inp, out);
    bar.append(lab);
    inputs[name] = [inp, out];
  }

  function drawText() {
    prompt.textContent = "user: " + model.get("prompt");
    text.textContent = "";
    text.append(el_("span", "tmlab-st-sofar", model.get("text")));
    const next = model.get("drawn");
    if (next) text.append(el_("span", "tmlab-st-next", next));
  }

  function drawControls() {
    for (const [name] of SLIDERS) {
      const [inp, out] = inputs[name];
      const v = model.get(name);
      if (document.activeElement !== inp) inp.value = String(v);
      out.textContent = String(v);
    }
    if (document.activeElement !== rate) rate.value = String(model.get("rate"));
    const playing = model.get("playing");
    playB.disabled = playing;
    stopB.disabled = !playing;
    root.classList.toggle("tmlab-st-busy", model.get("busy"));
    status.textContent = model.get("status");
    const lab = model.get("view_label");
    label.textContent = lab;
    label.className = "tmlab-st-label " + (lab.startsWith("exact") ? "tmlab-st-exact" : "tmlab-st-approx");
  }

  function drawGrid() {
    const cols = model.get("columns");
    const rows = model.get("stages");
    gridBox.textContent = "";
    if (!cols.length) return;
    const table = el_("table", "tmlab-st-grid");
    const head = el_("tr");
    head.append(el_("th", "tmlab-st-stage", "stage \u2193 / candidate \u2192"));
    cols.forEach((c, k) => {
      const th = el_("th");
      const b = el_("button", "tmlab-st-cand" + (c.drawn ? " tmlab-st-drawn" : ""),
        (c.key ? c.key + " " : "") + c.label);
      b.dataset.index = String(k);
      b.dataset.token = c.label;
      b.title = c.drawn ? "the server drew this one" : "take this token";
      b.addEventListener("click", () => send({ type: "pick", index: k }));
      th.append(b);
      head.append(th);
    });
    head.append(el_("th", "", "kept"), el_("th", "", "removed"), el_("th", "", "H"), el_("th", "", ""));
    table.append(head);
    for (const r of rows) {
      const tr = el_("tr", r.active ? "" : "tmlab-st-off");
      tr.dataset.stage = r.stage;
      tr.append(el_("th", "tmlab-st-stage", `${r.stage} ${r.setting}`));
      for (const cell of r.cells) {
        const td = el_("td", "tmlab-st-cell" + (cell.cut ? " tmlab-st-cut" : ""));
        const b = el_("div", "tmlab-st-b");
        b.style.height = Math.max(1, Math.round(cell.h * 40)) + "px";
        td.append(b, el_("div", "", cell.txt));
        if (cell.cut) td.append(el_("div", "tmlab-st-why", cell.cut));
        td.title = cell.cut ? `cut by ${cell.cut}` : cell.txt;
        tr.append(td);
      }
      tr.append(el_("td", "", String(r.kept)), el_("td", "", r.removed), el_("td", "", r.entropy),
        el_("td", "tmlab-st-why", r.label));
      table.append(tr);
    }
    gridBox.append(table);
  }

  function drawHesitate() {
    hes.textContent = "";
    const items = model.get("hesitate");
    if (!items.length) return;
    hes.append(el_("span", "", "where does it hesitate? "));
    for (const h of items) {
      const b = el_("button", "", `#${h.position} \u201c${h.token}\u201d H=${h.entropy}` +
        (h.gap ? ` gap=${h.gap}` : ""));
      b.dataset.position = String(h.position);
      b.title = "go back to this position";
      b.addEventListener("click", () => send({ type: "jump", position: h.position }));
      hes.append(b);
    }
  }

  root.addEventListener("keydown", (ev) => {
    if (ev.target && ev.target.tagName === "INPUT") return;
    if (ev.key >= "1" && ev.key <= "9") {
      send({ type: "pick", index: Number(ev.key) - 1 });
    } else if (ev.key === " ") {
      send({ type: "sample" });
    } else if (ev.key === "Backspace") {
      send({ type: "back" });
    } else {
      return;
    }
    ev.preventDefault();
    ev.stopPropagation();
  });

  function all() { drawText(); drawControls(); drawGrid(); drawHesitate(); }
  all();
  model.on("change:text", drawText);
  model.on("change:drawn", drawText);
  model.on("change:stages", drawGrid);
  model.on("change:columns", drawGrid);
  model.on("change:hesitate", drawHesitate);
  for (const name of ["busy", "status", "view_label", "playing", "rate", ...SLIDERS.map((s) => s[0])]) {
    model.on("change:" + name, drawControls);
  }
}

export default { render };
