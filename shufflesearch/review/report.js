// The report page's plots: unpack the embedded plotly.js, draw every figure, and wire hover,
// click (the details panel) and the toggles. Everything comes from the page itself:
// #report-data holds the rows and figures (shufflesearch/review/figures.py says how traces
// refer to rows), #plotly-gz the plotting library. Nothing is fetched.
'use strict';
(async function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const rows = data.rows;
  const status = document.getElementById('plot-status');
  const panel = document.getElementById('details');
  const body = document.getElementById('details-body');
  const hidden = new Set();  // the flags whose toggle is off

  async function unpackPlotly() {
    const packed = atob(document.getElementById('plotly-gz').textContent.trim());
    const bytes = Uint8Array.from(packed, (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    const code = await new Response(stream).text();
    const script = document.createElement('script');
    script.textContent = code;  // an inline script runs at once, fetching nothing
    document.head.appendChild(script);
    if (!window.Plotly) throw new Error('plotly.js did not start');
  }

  // A trace as drawn now: the rows a toggle hides are left out (every per-point array is
  // filtered alike), and each point's hover text is its row's.
  function shown(trace) {
    const meta = trace.meta || {};
    const t = Object.assign({}, trace);
    if (meta.overlay) t.visible = !hidden.has(meta.overlay);
    if (!Array.isArray(trace.customdata)) return t;
    if (!meta.fixed) {
      const keep = trace.customdata.map((i) => i < 0 || !rows[i].f.some((f) => hidden.has(f)));
      for (const key of ['x', 'y', 'customdata', 'text']) {
        if (Array.isArray(trace[key])) t[key] = trace[key].filter((_, k) => keep[k]);
      }
    }
    t.hovertext = t.customdata.map((i) => (i >= 0 ? rows[i].h : ''));
    return t;
  }

  const config = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['select2d', 'lasso2d'],
                  toImageButtonOptions: {format: 'png', scale: 2}};

  async function draw() {
    for (const [id, fig] of Object.entries(data.figures)) {
      const el = document.getElementById('fig-' + id);
      const before = el.data || [];
      const traces = fig.data.map((trace, k) => {
        const t = shown(trace);  // a series hidden from its legend entry stays hidden
        if (before[k] && before[k].visible === 'legendonly' && t.visible !== false) t.visible = 'legendonly';
        return t;
      });
      // After the first drawing, keep Plotly's own layout: a zoom survives a toggle.
      await Plotly.react(el, traces, el.layout || JSON.parse(JSON.stringify(fig.layout)), config);
    }
  }

  function showDetails(i) {
    const r = rows[i];
    body.innerHTML = '<div class="facts">' + r.h + '</div>' + r.p;
    panel.dataset.trial = String(r.t);
    panel.hidden = false;
  }

  function copy(button) {
    const code = body.querySelector('code.cmd');
    const done = () => { button.textContent = 'copied'; };
    const fallback = () => {  // no clipboard API (an insecure context): select and copy
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      if (document.execCommand('copy')) done(); else button.textContent = 'selected: press Ctrl+C';
    };
    if (navigator.clipboard) navigator.clipboard.writeText(code.textContent).then(done, fallback);
    else fallback();
  }

  panel.addEventListener('click', (e) => {
    if (e.target.closest('.close')) panel.hidden = true;
    const b = e.target.closest('button[data-copy]');
    if (b) copy(b);
  });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') panel.hidden = true; });
  document.querySelectorAll('tr[data-row]').forEach((tr) => {
    tr.addEventListener('click', () => showDetails(Number(tr.dataset.row)));
  });

  try {
    await unpackPlotly();
  } catch (err) {
    status.textContent = 'The plots need a browser that can unpack the embedded plotting library ' +
      '(DecompressionStream: Chrome 80, Firefox 113, Safari 16.4 or later); the tables hold every ' +
      'figure. (' + err + ')';
    document.body.dataset.plotError = String(err);
    return;
  }
  await draw();
  for (const id of Object.keys(data.figures)) {
    document.getElementById('fig-' + id).on('plotly_click', (e) => {
      const p = e.points && e.points[0];
      if (p && p.customdata >= 0) showDetails(p.customdata);
    });
  }
  document.querySelectorAll('input[data-toggle]').forEach((box) => {
    box.addEventListener('change', async () => {
      if (box.checked) hidden.delete(box.dataset.toggle); else hidden.add(box.dataset.toggle);
      document.body.dataset.drawing = '1';
      await draw();
      delete document.body.dataset.drawing;
    });
  });
  status.textContent = '';
  document.body.dataset.plotted = String(Object.keys(data.figures).length);
})();
