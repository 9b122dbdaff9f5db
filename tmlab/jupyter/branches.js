// tmlab's Branches tab (anywidget ES module, no build step): the tree of an Explorer's runs.
// The outline comes from Python (trait `nodes`); a click on a node sends
// {type: "select", node} and Python shows that run in the other tabs.

const CSS = `
.tmlab-br { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12px; line-height: 1.7; padding: 4px; }
.tmlab-br-node { cursor: pointer; border-radius: 3px; padding: 1px 4px; }
.tmlab-br-node:hover { background: #f1f5f9; }
.tmlab-br-node.tmlab-br-selected { background: #e3f2fd; }
.tmlab-br-token { background: #ffd54f; border-radius: 3px; padding: 0 2px; white-space: pre; }
.tmlab-br-dim { opacity: 0.6; }
.tmlab-br-empty { opacity: 0.7; font-style: italic; }
`;

function render({ model, el }) {
  const style = document.createElement("style");
  style.textContent = CSS;
  const root = document.createElement("div");
  root.className = "tmlab-br";
  el.append(style, root);

  function draw() {
    root.replaceChildren();
    const nodes = model.get("nodes");
    if (!nodes.length) {
      const e = document.createElement("div");
      e.className = "tmlab-br-empty";
      e.textContent = "no runs yet: send a prompt, then click an alternative in the Tokens tab";
      root.append(e);
      return;
    }
    nodes.forEach((n, i) => {
      const d = document.createElement("div");
      d.className = "tmlab-br-node" + (i === model.get("selected") ? " tmlab-br-selected" : "");
      d.dataset.node = String(i);
      if (n.id !== null) d.dataset.id = String(n.id);
      d.style.marginLeft = `${1.6 * n.depth}em`;
      const head = document.createElement("span");
      head.className = "tmlab-br-dim";
      head.textContent = (n.depth ? "\u2514 " : "") + (n.id !== null ? `#${n.id} ` : "");
      d.append(head);
      if (n.token !== null) {
        const where = document.createElement("span");
        where.className = "tmlab-br-dim";
        where.textContent = `@${n.position} \u2026${n.before}`;
        const tok = document.createElement("span");
        tok.className = "tmlab-br-token";
        tok.textContent = n.token;
        d.append(where, tok);
      }
      const text = document.createElement("span");
      text.textContent = n.text;
      const nums = document.createElement("span");
      nums.className = "tmlab-br-dim";
      nums.textContent = n.numbers ? `  (${n.numbers})` : "";
      d.append(text, nums);
      d.addEventListener("click", () => model.send({ type: "select", node: i }));
      root.append(d);
    });
  }

  model.on("change:nodes", draw);
  model.on("change:selected", draw);
  draw();
}

export default { render };
