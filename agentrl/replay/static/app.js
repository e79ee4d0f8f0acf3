// agentrl replay viewer. Vanilla JS, no dependencies.
//
// Everything shown comes from model output or env text: untrusted. The DOM is built with
// createElement + textContent only (this file never assigns HTML), so a reply holding markup
// shows as text. Data comes from the server's /api routes, or, in an exported file, from the
// JSON embedded in <script id="agentrl-data">, which holds the same route bodies.
'use strict';
(function () {
  // ---------------------------------------------------------------- data source
  const EMBED = document.getElementById('agentrl-data');
  const DATA = EMBED ? JSON.parse(EMBED.textContent) : null;

  async function api(route, params) {
    if (DATA) return fromEmbed(route, params || {});
    const q = params ? '?' + new URLSearchParams(params).toString() : '';
    const res = await fetch('/api/' + route + q, { cache: 'no-store' });
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON: report the status below */ }
    if (!res.ok) throw new Error((body && body.error) || res.status + ' ' + res.statusText);
    return body;
  }

  function fromEmbed(route, p) {
    if (route === 'index' || route === 'metrics' || route === 'config') return DATA[route];
    const s = DATA.steps[p.split + ':' + p.step];
    if (!s) throw new Error('no ' + p.split + ' step ' + p.step + ' in this export');
    if (route === 'step') return s.summary;
    if (!s.episodes) {
      throw new Error('this export holds only summaries for ' + p.split + ' step ' + p.step +
        ' (size budget); open the run with `agentrl replay` to see its episodes');
    }
    const ep = s.episodes[Number(p.i)];
    if (!ep) throw new Error('no episode ' + p.i);
    return ep;
  }

  // ---------------------------------------------------------------- DOM helpers
  const $ = (id) => document.getElementById(id);

  // h('div', {class: 'x', text: 'y', title: 't', data: {i: 1}, on: {click: f}}, child, ...)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    const a = attrs || {};
    for (const k of Object.keys(a)) {
      const v = a[k];
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'data') for (const d of Object.keys(v)) el.dataset[d] = String(v[d]);
      else if (k === 'on') for (const ev of Object.keys(v)) el.addEventListener(ev, v[ev]);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVGNS, tag);
    for (const k of Object.keys(attrs || {})) el.setAttribute(k, String(attrs[k]));
    if (text !== undefined) el.textContent = String(text);
    return el;
  }

  const fmt = (x, d) => (x === null || x === undefined || Number.isNaN(x)) ? '–' : Number(x).toFixed(d === undefined ? 2 : d);
  const signed = (x) => (x === null || x === undefined) ? '–' : (x >= 0 ? '+' : '') + Number(x).toFixed(2);
  const pct = (x) => (x === null || x === undefined) ? '–' : Math.round(100 * x) + '%';
  const mean = (xs) => xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;

  // ---------------------------------------------------------------- state
  const S = {
    index: null,
    split: 'train',
    step: null,
    stepData: null,
    episodeCache: new Map(),
    slots: { A: null, B: null },  // {split, step, ep, turn}
    compare: false,
    warnings: new Map(),          // source -> [message]
  };

  function setWarnings(source, list) {
    if (list && list.length) S.warnings.set(source, list); else S.warnings.delete(source);
    const ul = clear($('warning-list'));
    const seen = new Set();
    for (const msgs of S.warnings.values()) {
      for (const m of msgs) {
        if (seen.has(m)) continue;
        seen.add(m);
        ul.appendChild(h('li', { text: m }));
      }
    }
    $('warnings').hidden = seen.size === 0;
  }

  function status(text) { $('status').textContent = text; }

  // ---------------------------------------------------------------- overview: charts + config
  // A series is [metric, label, kind]; kind (default: the label) styles it: train, eval or limit.
  // Curriculum runs log their stage's rollout limits (curriculum/max_new_tokens, ...): the reply
  // budget is drawn over the response length, and the limits get a chart of their own.
  const CHARTS = [
    { title: 'Reward', series: [['train/reward', 'train'], ['eval/reward', 'eval']] },
    { title: 'Success rate', series: [['train/success_rate', 'train'], ['eval/success_rate', 'eval']], range: [0, 1] },
    { title: 'Response length (tokens)', series: [['train/response_length', 'train'], ['eval/response_length', 'eval'],
      ['curriculum/max_new_tokens', 'stage limit', 'limit']] },
    { title: 'Format-valid rate', series: [['train/format_valid_rate', 'train'], ['eval/format_valid_rate', 'eval']], range: [0, 1] },
    { title: 'Curriculum stage limits (tokens)', optional: true, series: [['curriculum/max_context_tokens', 'context', 'limit'],
      ['curriculum/max_new_tokens', 'reply', 'train']] },
  ];

  function renderCharts(metrics) {
    const box = clear($('charts'));
    const rows = (metrics && metrics.rows) || [];
    for (const def of CHARTS) {
      if (def.optional && !rows.some((r) => def.series.some(([key]) => typeof r[key] === 'number'))) continue;
      box.appendChild(chart(def, rows));
    }
  }

  function chart(def, rows) {
    const W = 320, H = 150, L = 44, R = 10, T = 10, B = 22;
    const series = def.series.map(([key, label, kind]) => ({
      key, label, kind: kind || label, eval: (kind || label) === 'eval',
      pts: rows.filter((r) => typeof r[key] === 'number').map((r) => [r.step, r[key]]),
    })).filter((se) => se.pts.length);
    const fig = h('figure', { class: 'chart', data: { metric: def.series[0][0] } }, h('figcaption', { text: def.title }));
    if (!series.length) { fig.appendChild(h('p', { class: 'empty', text: 'no data yet' })); return fig; }
    const all = series.flatMap((se) => se.pts);
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    if (def.range) { y0 = Math.min(y0, def.range[0]); y1 = Math.max(y1, def.range[1]); }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'plot', role: 'img', 'aria-label': def.title });
    for (let k = 0; k <= 2; k++) {
      const v = y0 + (y1 - y0) * k / 2;
      svg.appendChild(s('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: 'grid' }));
      svg.appendChild(s('text', { x: L - 4, y: Y(v) + 3, class: 'ylab' }, Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2)));
    }
    svg.appendChild(s('text', { x: L, y: H - 6, class: 'xlab' }, 'step ' + x0));
    svg.appendChild(s('text', { x: W - R, y: H - 6, class: 'xlab end' }, x1));
    for (const se of series) {
      const pts = se.pts.map((p) => X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1)).join(' ');
      svg.appendChild(s('polyline', { points: pts, class: 'line ' + se.kind }));
      if (se.kind === 'limit') continue;
      if (se.eval || se.pts.length < 40) {
        for (const p of se.pts) svg.appendChild(s('circle', { cx: X(p[0]), cy: Y(p[1]), r: 2.2, class: 'dot ' + (se.eval ? 'eval' : 'train') }));
      }
    }
    // Hover: nearest logged step and its values; click: open that step.
    const cursor = s('line', { y1: T, y2: H - B, class: 'cursor', visibility: 'hidden' });
    const label = s('text', { x: W - R, y: T + 8, class: 'hover end' });
    const overlay = s('rect', { x: L, y: T, width: W - L - R, height: H - T - B, class: 'overlay' });
    svg.append(cursor, label, overlay);
    const steps = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
    const nearest = (ev) => {
      const r = svg.getBoundingClientRect();
      const x = x0 + ((ev.clientX - r.left) / r.width * W - L) / (W - L - R) * (x1 - x0);
      return steps.reduce((best, st) => Math.abs(st - x) < Math.abs(best - x) ? st : best, steps[0]);
    };
    overlay.addEventListener('mousemove', (ev) => {
      const st = nearest(ev);
      cursor.setAttribute('x1', X(st)); cursor.setAttribute('x2', X(st));
      cursor.setAttribute('visibility', 'visible');
      const parts = series.map((se) => {
        const p = se.pts.find((q) => q[0] === st);
        return p ? se.label + ' ' + fmt(p[1], Math.abs(p[1]) >= 100 ? 0 : 3) : null;
      }).filter(Boolean);
      label.textContent = 'step ' + st + ': ' + parts.join(' · ');
    });
    overlay.addEventListener('mouseleave', () => { cursor.setAttribute('visibility', 'hidden'); label.textContent = ''; });
    overlay.addEventListener('click', (ev) => {
      const st = nearest(ev);
      for (const split of ['train', 'eval']) {
        if (S.index && S.index.splits[split].includes(st)) { selectStep(split, st); return; }
      }
    });
    fig.appendChild(svg);
    fig.appendChild(h('div', { class: 'legend' }, series.map((se) => h('span', { class: 'key ' + se.kind, text: se.label }))));
    return fig;
  }

  // The trainer's collapse guard logs collapse/warning = 1 on steps whose signals (in-group reward
  // std, zero-variance groups, distinct replies, instruction echo) say the policy is collapsing.
  function collapseWarnings(rows) {
    const steps = rows.filter((r) => r['collapse/warning']).map((r) => r.step);
    if (!steps.length) return [];
    const shown = steps.length > 8 ? steps.slice(0, 8).join(', ') + ', ...' : steps.join(', ');
    return ['Collapse warning at step ' + shown + ': rewards barely vary within groups or replies repeat ' +
            'themselves; see the collapse/* curves in TensorBoard and docs/curriculum.md'];
  }

  // After each RL evaluation the trainer compares it puzzle by puzzle with the run's best so far and
  // logs eval/drop_from_best = 1 on a significant drop (docs/metrics.md).
  function dropWarnings(rows) {
    return rows.filter((r) => r['eval/drop_from_best']).map((r) =>
      'Held-out drop at step ' + r.step + ': ' + r['eval/lost_since_best'] + ' puzzles lost and ' +
      r['eval/gained_since_best'] + ' gained against step ' + r['eval/best_step'] +
      ', the best so far; its model is in the run\'s best/ folder (eval.keep_best)');
  }

  async function loadMetrics() {
    try {
      const m = await api('metrics');
      setWarnings('metrics', m.warnings);
      setWarnings('collapse', collapseWarnings((m && m.rows) || []));
      setWarnings('drop', dropWarnings((m && m.rows) || []));
      renderCharts(m);
    } catch (e) { setWarnings('metrics', ['metrics: ' + e.message]); }
  }

  async function loadConfig() {
    try {
      const c = await api('config');
      $('config-text').textContent = c.text === null ? '(no config.yaml)' : c.text;
      setWarnings('config', c.warnings);
    } catch (e) { setWarnings('config', ['config: ' + e.message]); }
  }

  // ---------------------------------------------------------------- step browser
  function fillStepSelects() {
    const splits = S.index.splits;
    const sp = $('split');
    const cur = S.split;
    clear(sp);
    for (const name of Object.keys(splits)) {
      sp.appendChild(h('option', { value: name, text: name + ' (' + splits[name].length + ')' }));
    }
    sp.value = cur;
    fillStepOptions();
    for (const id of ['cmp-a', 'cmp-b']) {
      const sel = $(id);
      const keep = sel.value;
      clear(sel);
      for (const name of Object.keys(splits)) {
        for (const st of splits[name]) sel.appendChild(h('option', { value: name + ':' + st, text: name + ' step ' + st }));
      }
      if (keep) sel.value = keep;
    }
    // Default comparison: first vs last eval step (eval seeds repeat, so rows line up).
    const pool = splits.eval.length >= 2 ? splits.eval.map((x) => 'eval:' + x) : splits.train.map((x) => 'train:' + x);
    if (!cmpChosen) { $('cmp-a').value = pool[0] || ''; $('cmp-b').value = pool[pool.length - 1] || ''; }
  }
  let cmpChosen = false;

  function fillStepOptions() {
    const sel = clear($('step'));
    const steps = S.index.splits[S.split] || [];
    // In an export over its size budget, some steps carry summaries only: say so in the list.
    const partial = (st) => DATA && !DATA.steps[S.split + ':' + st].episodes;
    for (const st of steps) sel.appendChild(h('option', { value: st, text: 'step ' + st + (partial(st) ? ' (summary only)' : '') }));
    if (!steps.length) sel.appendChild(h('option', { value: '', text: '(none yet)' }));
    if (S.step !== null && steps.includes(S.step)) sel.value = String(S.step);
  }

  async function selectStep(split, step, thenOpen) {
    S.split = split;
    S.step = step;
    $('split').value = split;
    fillStepOptions();
    $('step').value = String(step);
    const box = clear($('episodes'));
    box.appendChild(h('p', { class: 'empty', text: 'loading ' + split + ' step ' + step + '…' }));
    try {
      const data = await api('step', { split, step });
      if (S.split !== split || S.step !== step) return;  // a newer selection won
      S.stepData = data;
      setWarnings('step', data.warnings);
      fillFilterOptions(data);
      renderEpisodes();
      if (thenOpen !== undefined) openEpisode(split, step, thenOpen);
    } catch (e) {
      clear(box).appendChild(h('p', { class: 'error', text: e.message }));
    }
  }

  function fillFilterOptions(data) {
    const opts = (id, values) => {
      const sel = $(id), keep = sel.value;
      clear(sel).appendChild(h('option', { value: '', text: 'all' }));
      for (const v of values) sel.appendChild(h('option', { value: v, text: v }));
      sel.value = values.includes(keep) ? keep : '';
    };
    opts('f-env', [...new Set(data.episodes.map((e) => e.env))].sort());
    opts('f-end', [...new Set(data.episodes.map((e) => e.end_reason))].sort());
  }

  function filteredEpisodes() {
    const d = S.stepData;
    if (!d) return [];
    const env = $('f-env').value, succ = $('f-success').value, end = $('f-end').value;
    const rmin = $('f-rmin').value === '' ? -Infinity : Number($('f-rmin').value);
    const rmax = $('f-rmax').value === '' ? Infinity : Number($('f-rmax').value);
    return d.episodes.filter((e) =>
      (!env || e.env === env) && (!succ || String(Number(e.success)) === succ) &&
      (!end || e.end_reason === end) && e.reward >= rmin && e.reward <= rmax);
  }

  function sorter() {
    const v = $('f-sort').value;
    if (v === 'group') return (a, b) => a.group - b.group || a.i - b.i;
    const key = v.replace('-', ''), dir = v.startsWith('-') ? -1 : 1;
    return (a, b) => dir * (a[key] - b[key]) || a.i - b.i;
  }

  function renderEpisodes() {
    const d = S.stepData;
    const box = clear($('episodes'));
    if (!d) return;
    const eps = filteredEpisodes().sort(sorter());
    const all = d.episodes;
    $('step-stats').textContent =
      all.length + ' episodes · ' + d.groups.length + ' groups · success ' +
      pct(mean(all.map((e) => Number(e.success)))) + ' · mean reward ' + fmt(mean(all.map((e) => e.reward))) +
      (eps.length !== all.length ? ' · showing ' + eps.length : '');
    if (!eps.length) { box.appendChild(h('p', { class: 'empty', text: 'no episode matches the filters' })); return; }
    if ($('f-view').value === 'list') {
      for (const e of eps) box.appendChild(h('div', { class: 'list-row' }, chip(e, { long: true })));
      return;
    }
    const byGroup = new Map();
    for (const e of eps) {
      if (!byGroup.has(e.group)) byGroup.set(e.group, []);
      byGroup.get(e.group).push(e);
    }
    const groups = d.groups.filter((g) => byGroup.has(g.group));
    const v = $('f-sort').value;
    if (v !== 'group') {
      const key = v.replace('-', ''), dir = v.startsWith('-') ? -1 : 1;
      const score = (g) => mean(byGroup.get(g.group).map((e) => e[key]));
      groups.sort((a, b) => dir * (score(a) - score(b)) || a.group - b.group);
    }
    for (const g of groups) {
      const attempts = byGroup.get(g.group);
      box.appendChild(h('div', { class: 'group', data: { group: g.group } },
        h('div', { class: 'group-head' },
          h('span', { class: 'gname', text: 'group ' + g.group }),
          h('span', { text: g.env + ' · seed ' + g.seed }),
          h('span', { class: 'muted', text: 'mean ' + signed(g.mean_reward) + ' · solved ' + pct(g.success_rate) })),
        h('div', { class: 'group-body' }, thumbnail(g), h('div', { class: 'attempts' }, attempts.map((e) => chip(e))))));
    }
  }

  function thumbnail(g) {
    const grid = boardOf(g.env, g.observation);
    if (grid) {
      const c = drawBoard(grid.rows, 7);
      c.classList.add('thumb');
      return c;
    }
    const first = (g.observation || '').split('\n').find((l) => l.trim()) || '';
    return h('div', { class: 'thumb text', title: g.observation, text: first.slice(0, 80) });
  }

  // One episode as a button. opts: long (more text), split/step (default: the browsed step), onClick.
  function chip(e, opts) {
    const o = opts || {};
    const split = o.split || S.split, step = o.step === undefined ? S.step : o.step;
    const sel = ['A', 'B'].some((k) => {
      const sl = S.slots[k];
      return sl && sl.split === split && sl.step === step && sl.ep.i === e.i;
    });
    return h('button', {
      type: 'button',
      class: 'chip ' + (e.success ? 'ok' : 'fail') + (sel ? ' selected' : ''),
      data: { i: e.i, env: e.env },
      title: e.env + ' · seed ' + e.seed + ' · group ' + e.group + ' · episode ' + e.episode_id + '\n' +
        'reward ' + signed(e.reward) + ' · ' + (e.success ? 'success' : 'failure') + ' · ' + e.end_reason + '\n' +
        e.turns + ' turns · ' + e.length + ' sampled tokens' + (e.format_valid ? '' : ' · format errors'),
      on: { click: o.onClick || (() => openEpisode(split, step, e.i)) },
    },
    h('span', { class: 'r', text: signed(e.reward) }),
    h('span', { class: 'sub', text: e.turns + 't · ' + e.length + 'tok' }),
    o.long ? h('span', { class: 'sub', text: e.env + ' · seed ' + e.seed + ' · g' + e.group + ' · ' + e.end_reason }) : null,
    e.format_valid ? null : h('span', { class: 'flag', title: 'format errors', text: '!' }));
  }

  // ---------------------------------------------------------------- episodes
  async function getEpisode(split, step, i) {
    const key = split + ':' + step + ':' + i;
    if (S.episodeCache.has(key)) return S.episodeCache.get(key);
    const ep = await api('episode', { split, step, i });
    S.episodeCache.set(key, ep);
    if (S.episodeCache.size > 64) S.episodeCache.delete(S.episodeCache.keys().next().value);
    return ep;
  }

  function targetSlot() {
    if (!S.compare) return 'A';
    const r = document.querySelector('input[name="target"]:checked');
    return r ? r.value : 'A';
  }

  async function openEpisode(split, step, i, slot) {
    const name = slot || targetSlot();
    const el = $('slot-' + name);
    try {
      const ep = await getEpisode(split, step, i);
      S.slots[name] = { split, step, ep, turn: 0 };
      renderSlot(name);
      if (name === 'A') history.replaceState(null, '', '#' + split + '/' + step + '/' + i);
      // After filling A in compare mode, the next pick most likely goes to B.
      if (S.compare && name === 'A') setTarget('B');
      renderEpisodes();
      showTab('episode');
    } catch (e) {
      clear(el).appendChild(h('p', { class: 'error', text: e.message }));
    }
  }

  function setTarget(v) {
    const r = document.querySelector('input[name="target"][value="' + v + '"]');
    if (r) r.checked = true;
  }

  function renderSlot(name) {
    const sl = S.slots[name];
    const el = clear($('slot-' + name));
    if (!sl) { el.appendChild(h('p', { class: 'empty', text: 'Pick an episode.' })); return; }
    const ep = sl.ep;
    const n = ep.turns.length;
    el.appendChild(h('div', { class: 'ep-head' },
      h('div', { class: 'ep-title' },
        S.compare ? h('span', { class: 'slot-name', text: name }) : null,
        h('strong', { text: ep.env }),
        h('span', { text: ' · seed ' + ep.seed + ' · group ' + ep.group + ' · episode ' + ep.episode_id + ' · ' + sl.split + ' step ' + sl.step })),
      h('div', { class: 'badges' },
        h('span', { class: 'badge ' + (ep.success ? 'ok' : 'fail'), text: ep.success ? 'success' : 'failure' }),
        h('span', { class: 'badge', text: 'reward ' + signed(ep.reward) }),
        h('span', { class: 'badge', text: 'end: ' + ep.end_reason }),
        h('span', { class: 'badge', text: n + ' turns' }),
        h('span', { class: 'badge', text: ep.samples.reduce((a, smp) => a + smp.loss_mask.reduce((x, y) => x + y, 0), 0) + ' sampled tokens' })),
      Object.keys(ep.reset_info || {}).length
        ? h('details', { class: 'truth' }, h('summary', { text: 'ground truth (reset info)' }), h('pre', { class: 'code', text: JSON.stringify(ep.reset_info, null, 2) }))
        : null,
      ep.error ? h('p', { class: 'error', text: 'env error: ' + ep.error }) : null));
    if (!n) { el.appendChild(h('p', { class: 'empty', text: 'this episode has no turns' })); return; }
    const range = h('input', { type: 'range', min: 0, max: n - 1, value: sl.turn, class: 'turn-range', 'aria-label': 'turn' });
    range.addEventListener('input', () => setTurn(name, Number(range.value)));
    el.appendChild(h('div', { class: 'turn-nav' },
      h('button', { type: 'button', class: 'prev', title: 'previous turn (←)', text: '◀', on: { click: () => setTurn(name, sl.turn - 1) } }),
      range,
      h('button', { type: 'button', class: 'next', title: 'next turn (→)', text: '▶', on: { click: () => setTurn(name, sl.turn + 1) } }),
      h('span', { class: 'turn-label', text: 'turn ' + (sl.turn + 1) + ' / ' + n })));
    el.appendChild(renderTurn(ep, sl.turn));
  }

  function setTurn(name, t, fromSync) {
    const sl = S.slots[name];
    if (!sl) return;
    const n = sl.ep.turns.length;
    sl.turn = Math.max(0, Math.min(n - 1, t));
    const el = $('slot-' + name);
    const old = el.querySelector('.turn');
    if (old) old.replaceWith(renderTurn(sl.ep, sl.turn));
    const r = el.querySelector('.turn-range');
    if (r) r.value = sl.turn;
    const lab = el.querySelector('.turn-label');
    if (lab) lab.textContent = 'turn ' + (sl.turn + 1) + ' / ' + n;
    if (!fromSync && S.compare && $('sync').checked) {
      const other = name === 'A' ? 'B' : 'A';
      if (S.slots[other]) setTurn(other, t, true);
    }
  }

  function renderTurn(ep, k) {
    const t = ep.turns[k];
    const last = k === ep.turns.length - 1;
    const obs = h('div', { class: 'obs' }, h('h4', { text: 'Observation' }), observationView(ep.env, t.observation));
    const reply = h('div', { class: 'reply' },
      h('h4', {}, 'Reply', t.finish_reason === 'length'
        ? h('span', { class: 'badge warn', text: 'cut at max tokens' }) : h('span', { class: 'badge muted', text: t.finish_reason })),
      replyView(t.reply));
    const meta = h('div', { class: 'turn-meta' },
      h('div', {}, h('span', { class: 'k', text: 'actions' }),
        t.actions.length ? t.actions.map((a) => h('code', { class: 'action', text: a })) : h('span', { class: 'muted', text: 'none' })),
      h('div', {}, h('span', { class: 'k', text: 'reward' }), h('span', { class: 'v', text: signed(t.reward) })),
      h('div', {}, h('span', { class: 'k', text: 'format' }), t.format_ok
        ? h('span', { class: 'ok', text: '✓ ok' })
        : h('span', { class: 'fail', text: '✗ ' + (t.format_error || 'invalid') })),
      // The env's verdict (Turn.follows_thought): null or absent when it did not judge.
      typeof t.follows_thought === 'boolean'
        ? h('div', {}, h('span', { class: 'k', text: 'follows thought' }), t.follows_thought
          ? h('span', { class: 'ok', text: '✓ yes' })
          : h('span', { class: 'fail', text: '✗ the moves are not those the thought names' }))
        : null,
      Object.keys(t.info || {}).length
        ? h('details', {}, h('summary', { text: 'env info' }), h('pre', { class: 'code', text: JSON.stringify(t.info, null, 2) }))
        : null);
    const end = last ? h('div', { class: 'end ' + (ep.success ? 'ok' : 'fail') },
      'Episode ended: ' + ep.end_reason + ' · ' + (ep.success ? 'success' : 'failure') + ' · return ' + signed(ep.reward)) : null;
    const tokens = $('show-tokens').checked ? tokenView(ep, t) : null;
    return h('div', { class: 'turn', data: { turn: k } }, h('div', { class: 'turn-grid' }, obs, h('div', {}, reply, meta)), end, tokens);
  }

  // ---------------------------------------------------------------- observations: sokoban boards
  const SOKO = new Set(['#', '_', 'O', 'X', '√', 'P', 'S']);

  // The longest block of >= 3 consecutive lines made only of sokoban tile characters.
  function findGrid(text) {
    const lines = String(text || '').split('\n');
    let best = null, cur = null;
    lines.forEach((line, idx) => {
      const row = line.replace(/\s+/g, '');
      const ok = row.length >= 3 && [...row].every((c) => SOKO.has(c)) && row.includes('#');
      if (ok) {
        if (!cur) cur = { start: idx, rows: [] };
        cur.rows.push([...row]);
        cur.end = idx + 1;
      } else cur = null;
      if (cur && cur.rows.length >= 3 && (!best || cur.rows.length > best.rows.length)) best = { ...cur, rows: cur.rows.slice() };
    });
    return best;
  }

  function boardOf(env, text) {
    const g = findGrid(text);
    if (!g) return null;
    const hasPlayer = g.rows.some((r) => r.includes('P') || r.includes('S'));
    return (/sokoban/i.test(env) || hasPlayer) ? { ...g, lines: String(text).split('\n') } : null;
  }

  const TILE = { wall: '#4b3b2f', wallLine: '#6b5644', floor: '#efe8dc', target: '#d64545', box: '#d9923b', boxEdge: '#9a5d17', boxOn: '#3fa34d', boxOnEdge: '#23702f', player: '#2f62d0' };

  function drawBoard(rows, cell) {
    const cols = Math.max(...rows.map((r) => r.length));
    const dpr = window.devicePixelRatio || 1;
    const c = h('canvas', { class: 'board', role: 'img', 'aria-label': 'sokoban board ' + rows.length + '×' + cols, data: { rows: rows.length, cols } });
    c.width = Math.round(cols * cell * dpr);
    c.height = Math.round(rows.length * cell * dpr);
    c.style.width = cols * cell + 'px';
    c.style.height = rows.length * cell + 'px';
    const g = c.getContext('2d');
    g.scale(dpr, dpr);
    rows.forEach((row, y) => row.forEach((ch, x) => tile(g, ch, x * cell, y * cell, cell)));
    return c;
  }

  function tile(g, ch, x, y, u) {
    if (ch === '#') {
      g.fillStyle = TILE.wall; g.fillRect(x, y, u, u);
      if (u >= 12) {  // bricks
        g.strokeStyle = TILE.wallLine; g.lineWidth = 1;
        g.beginPath();
        g.moveTo(x, y + u / 2 + 0.5); g.lineTo(x + u, y + u / 2 + 0.5);
        g.moveTo(x + u / 2 + 0.5, y); g.lineTo(x + u / 2 + 0.5, y + u / 2);
        g.moveTo(x + u / 4 + 0.5, y + u / 2); g.lineTo(x + u / 4 + 0.5, y + u);
        g.stroke();
      }
      return;
    }
    g.fillStyle = TILE.floor; g.fillRect(x, y, u, u);
    g.strokeStyle = 'rgba(0,0,0,0.06)'; g.lineWidth = 1; g.strokeRect(x + 0.5, y + 0.5, u - 1, u - 1);
    const cx = x + u / 2, cy = y + u / 2;
    if (ch === 'O' || ch === 'S') {
      g.strokeStyle = TILE.target; g.lineWidth = Math.max(1.5, u / 14);
      g.beginPath(); g.arc(cx, cy, u * 0.3, 0, 2 * Math.PI); g.stroke();
      g.beginPath(); g.arc(cx, cy, u * 0.1, 0, 2 * Math.PI); g.fillStyle = TILE.target; g.fill();
    }
    if (ch === 'X' || ch === '√') {
      const on = ch === '√', m = u * 0.14;
      g.fillStyle = on ? TILE.boxOn : TILE.box;
      g.strokeStyle = on ? TILE.boxOnEdge : TILE.boxEdge;
      g.lineWidth = Math.max(1.5, u / 16);
      g.fillRect(x + m, y + m, u - 2 * m, u - 2 * m);
      g.strokeRect(x + m, y + m, u - 2 * m, u - 2 * m);
      g.beginPath();
      g.moveTo(x + m, y + m); g.lineTo(x + u - m, y + u - m);
      g.moveTo(x + u - m, y + m); g.lineTo(x + m, y + u - m);
      g.stroke();
    }
    if (ch === 'P' || ch === 'S') {
      g.fillStyle = TILE.player;
      g.beginPath(); g.arc(cx, cy - u * 0.14, u * 0.14, 0, 2 * Math.PI); g.fill();           // head
      g.beginPath(); g.ellipse(cx, cy + u * 0.18, u * 0.22, u * 0.17, 0, Math.PI, 0); g.fill(); // shoulders
      g.fillRect(cx - u * 0.22, cy + u * 0.17, u * 0.44, u * 0.1);
    }
  }

  function observationView(env, text) {
    const b = boardOf(env, text);
    if (!b) return h('pre', { class: 'text', text });
    const before = b.lines.slice(0, b.start).join('\n').trim();
    const after = b.lines.slice(b.end).join('\n').trim();
    return h('div', { class: 'board-wrap' },
      before ? h('pre', { class: 'text', text: before }) : null,
      drawBoard(b.rows, 34),
      after ? h('pre', { class: 'text', text: after }) : null,
      h('details', { class: 'raw' }, h('summary', { text: 'as text' }), h('pre', { class: 'text mono', text })));
  }

  // ---------------------------------------------------------------- replies: thinking vs answer
  // Splits on <think>, </think>, <answer>, </answer>; an unclosed tag runs to the end (a reply cut
  // at max tokens). Tags themselves are shown as labels, never parsed as markup.
  function replySegments(text) {
    const out = [];
    const re = /<(\/?)(think|answer)>/gi;
    let mode = 'plain', pos = 0, m;
    const push = (kind, str, closed) => { if (str.length || kind !== 'plain') out.push({ kind, text: str, closed }); };
    while ((m = re.exec(text)) !== null) {
      const tag = m[2].toLowerCase(), closing = m[1] === '/';
      if (!closing && mode === 'plain') {
        push('plain', text.slice(pos, m.index));
        mode = tag; pos = re.lastIndex;
      } else if (closing && mode === tag) {
        push(tag, text.slice(pos, m.index), true);
        mode = 'plain'; pos = re.lastIndex;
      }
    }
    push(mode, text.slice(pos), mode === 'plain');
    return out.filter((seg) => seg.kind !== 'plain' || seg.text.trim());
  }

  function replyView(text) {
    const segs = replySegments(String(text || ''));
    if (!segs.length) return h('p', { class: 'muted', text: '(empty reply)' });
    return h('div', { class: 'segments' }, segs.map((seg) => h('div', { class: 'seg ' + seg.kind },
      seg.kind === 'plain' ? null : h('span', { class: 'seg-label', text: (seg.kind === 'think' ? 'thinking' : 'answer') + (seg.closed ? '' : ' (unclosed)') }),
      h('pre', { class: 'text', text: seg.text.replace(/^\n+|\n+$/g, '') }))));
  }

  // ---------------------------------------------------------------- token view
  function tokenView(ep, t) {
    const smp = ep.samples[t.sample];
    const box = h('div', { class: 'tokens-wrap' });
    if (!smp || !smp.token_ids.length) return append(box, [h('p', { class: 'muted', text: 'no token data for this turn' })]);
    const [ps, pe] = t.prompt_span, [rs, re] = t.response_span;
    const start = pe > ps ? ps : rs, end = Math.max(re, pe);
    let trained = 0;
    const toks = h('div', { class: 'tokens' });
    for (let i = start; i < end && i < smp.token_ids.length; i++) {
      const on = smp.loss_mask[i] === 1;
      const adv = smp.advantages ? smp.advantages[i] : null;
      const raw = smp.token_text ? smp.token_text[i] : null;
      const shown = raw === null || raw === undefined ? '⟨' + smp.token_ids[i] + '⟩' : (raw === '' ? '∅' : raw.replace(/\n/g, '↵\n'));
      let tip = '#' + i + ' · id ' + smp.token_ids[i] + (raw === null || raw === undefined ? '' : ' · ' + JSON.stringify(raw)) +
        '\n' + (on ? 'trained (sampled)' : 'context (not trained)');
      if (on) {
        const lp = smp.logprobs[i];
        tip += '\nlogprob ' + fmt(lp, 4) + ' (p ' + fmt(Math.exp(lp), 3) + ')';
        trained++;
      }
      if (adv !== null && adv !== undefined) tip += '\nadvantage ' + (adv >= 0 ? '+' : '') + fmt(adv, 4);
      const cls = on ? 'tok trained ' + (adv === null || adv === undefined || adv === 0 ? 'adv0' : adv > 0 ? 'pos' : 'neg') : 'tok ctx';
      toks.appendChild(h('span', { class: cls, data: { tip } }, shown));
    }
    return append(box, [
      h('div', { class: 'tok-head' },
        h('strong', { text: 'Tokens' }),
        h('span', { class: 'muted', text: ' sample ' + t.sample + ', tokens ' + start + '–' + end + ' · ' + trained + ' trained' }),
        h('span', { class: 'legend' },
          h('span', { class: 'swatch ctx', text: 'context' }), h('span', { class: 'swatch pos', text: 'trained, adv > 0' }),
          h('span', { class: 'swatch neg', text: 'trained, adv < 0' }), h('span', { class: 'swatch adv0', text: 'trained, no adv' }))),
      toks]);
  }

  // One floating tooltip for all tokens (native titles are slow and cannot be styled).
  function setupTooltip() {
    const tip = $('tip');
    document.addEventListener('mouseover', (ev) => {
      const t = ev.target.closest && ev.target.closest('[data-tip]');
      if (!t) { tip.hidden = true; return; }
      tip.textContent = t.dataset.tip;
      tip.hidden = false;
      const r = t.getBoundingClientRect();
      tip.style.left = Math.min(window.innerWidth - 260, Math.max(4, r.left)) + window.scrollX + 'px';
      tip.style.top = r.bottom + window.scrollY + 6 + 'px';
    });
  }

  // ---------------------------------------------------------------- compare steps
  async function compareSteps() {
    const out = clear($('cmp-out'));
    const parse = (v) => { const [split, step] = v.split(':'); return { split, step: Number(step) }; };
    if (!$('cmp-a').value || !$('cmp-b').value) { out.appendChild(h('p', { class: 'empty', text: 'no steps yet' })); return; }
    const a = parse($('cmp-a').value), b = parse($('cmp-b').value);
    let da, db;
    try { [da, db] = await Promise.all([api('step', a), api('step', b)]); } catch (e) {
      out.appendChild(h('p', { class: 'error', text: e.message })); return;
    }
    const stat = (d, name) => {
      const e = d.episodes;
      return h('tr', {}, h('th', { text: name + ': ' + d.split + ' step ' + d.step }), h('td', { text: e.length }),
        h('td', { text: fmt(mean(e.map((x) => x.reward))) }), h('td', { text: pct(mean(e.map((x) => Number(x.success)))) }),
        h('td', { text: fmt(mean(e.map((x) => x.length)), 0) }), h('td', { text: pct(mean(e.map((x) => Number(x.format_valid)))) }));
    };
    out.appendChild(h('table', { class: 'cmp-stats' },
      h('tr', {}, ['', 'episodes', 'mean reward', 'success', 'mean length', 'format valid'].map((x) => h('th', { text: x }))),
      stat(da, 'A'), stat(db, 'B')));
    // Rows: env + seed; seeds present in both steps first (eval seeds repeat across steps).
    const rows = new Map();
    for (const [d, side] of [[da, 'a'], [db, 'b']]) {
      for (const e of d.episodes) {
        const key = e.env + '\u0000' + e.seed;
        if (!rows.has(key)) rows.set(key, { env: e.env, seed: e.seed, a: [], b: [] });
        rows.get(key)[side].push(e);
      }
    }
    const list = [...rows.values()].sort((x, y) =>
      (Number(!(x.a.length && x.b.length)) - Number(!(y.a.length && y.b.length))) || x.env.localeCompare(y.env) || x.seed - y.seed);
    const shared = list.filter((r) => r.a.length && r.b.length).length;
    out.appendChild(h('p', { class: 'muted', text: shared + ' seeds in both steps' + (list.length > 200 ? ' · showing the first 200 of ' + list.length : '') }));
    const cell = (eps, slot, d) => h('td', {}, h('div', { class: 'attempts' }, eps.map((e) => chip(e, {
      split: d.split, step: d.step,
      onClick: () => { enableCompare(true); openEpisode(d.split, d.step, e.i, slot); },
    }))));
    const table = h('table', { class: 'cmp' }, h('tr', {}, ['env', 'seed', 'A attempts', 'B attempts'].map((x) => h('th', { text: x }))));
    for (const r of list.slice(0, 200)) {
      table.appendChild(h('tr', {}, h('td', { text: r.env }), h('td', { text: r.seed }), cell(r.a, 'A', da), cell(r.b, 'B', db)));
    }
    out.appendChild(table);
  }

  function enableCompare(on) {
    S.compare = on;
    $('compare').checked = on;
    $('slot-B').hidden = !on;
    $('target-wrap').hidden = !on;
    $('sync-wrap').hidden = !on;
    document.querySelector('.slots').classList.toggle('two', on);
    if (S.slots.A) renderSlot('A');
    if (S.slots.B) renderSlot('B');
  }

  function showTab(which) {
    $('pane-episode').hidden = which !== 'episode';
    $('pane-steps').hidden = which !== 'steps';
    $('tab-episode').classList.toggle('active', which === 'episode');
    $('tab-steps').classList.toggle('active', which === 'steps');
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $('split').addEventListener('change', () => {
      const steps = S.index.splits[$('split').value] || [];
      if (steps.length) selectStep($('split').value, steps[steps.length - 1]);
      else { S.split = $('split').value; S.step = null; S.stepData = null; fillStepOptions(); renderEpisodes(); }
    });
    $('step').addEventListener('change', () => { if ($('step').value !== '') selectStep(S.split, Number($('step').value)); });
    const moveStep = (d) => {
      const steps = S.index.splits[S.split] || [];
      const k = steps.indexOf(S.step) + d;
      if (k >= 0 && k < steps.length) selectStep(S.split, steps[k]);
    };
    $('step-prev').addEventListener('click', () => moveStep(-1));
    $('step-next').addEventListener('click', () => moveStep(1));
    for (const id of ['f-env', 'f-success', 'f-end', 'f-sort', 'f-view']) $(id).addEventListener('change', renderEpisodes);
    for (const id of ['f-rmin', 'f-rmax']) $(id).addEventListener('input', renderEpisodes);
    $('compare').addEventListener('change', () => { enableCompare($('compare').checked); if (S.compare && S.slots.A) setTarget('B'); });
    $('show-tokens').addEventListener('change', () => { for (const k of ['A', 'B']) if (S.slots[k]) setTurn(k, S.slots[k].turn, true); });
    $('tab-episode').addEventListener('click', () => showTab('episode'));
    $('tab-steps').addEventListener('click', () => { showTab('steps'); if (!$('cmp-out').firstChild) compareSteps(); });
    $('cmp-go').addEventListener('click', () => { cmpChosen = true; compareSteps(); });
    document.addEventListener('keydown', (ev) => {
      // Leave keys to fields that use them (text, number, range, radio, select); checkboxes don't.
      const t = ev.target || {};
      const field = t.tagName === 'SELECT' || t.tagName === 'TEXTAREA' || (t.tagName === 'INPUT' && t.type !== 'checkbox');
      if (field || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      const name = S.compare ? targetSlotForKeys() : 'A';
      const sl = S.slots[name];
      if (!sl) return;
      const moves = { ArrowLeft: sl.turn - 1, ArrowRight: sl.turn + 1, Home: 0, End: sl.ep.turns.length - 1 };
      if (ev.key in moves) { ev.preventDefault(); setTurn(name, moves[ev.key]); }
    });
    setupTooltip();
  }
  // Keys move slot A (and B with it when synced); unsynced, they move the slot picks go to.
  function targetSlotForKeys() {
    if ($('sync').checked) return S.slots.A ? 'A' : 'B';
    const t = targetSlot();
    return S.slots[t] ? t : 'A';
  }

  async function refreshIndex() {
    const idx = await api('index');
    const changed = !S.index || idx.version !== S.index.version;
    S.index = idx;
    setWarnings('index', idx.warnings);
    if (changed) {
      $('run-name').textContent = idx.run;
      document.title = idx.run + ' · agentrl replay';
      fillStepSelects();
    }
    return changed;
  }

  async function poll() {
    try {
      if (await refreshIndex()) {
        loadMetrics();
        loadConfig();
        // A run that had no steps yet: open the first one as soon as it appears.
        if (S.step === null) initialStep();
      }
      liveStatus();
    } catch (e) {
      status('server unreachable (' + e.message + ')');
    }
  }

  function liveStatus() {
    const n = S.index.splits.train.length + S.index.splits.eval.length;
    status('live · ' + n + ' step files · checked ' + new Date().toLocaleTimeString());
  }

  function initialStep() {
    const m = /^#(train|eval)\/(\d+)\/(\d+)$/.exec(location.hash);
    const sp = S.index.splits;
    if (m && sp[m[1]].includes(Number(m[2]))) { selectStep(m[1], Number(m[2]), Number(m[3])); return; }
    const split = sp.train.length ? 'train' : (sp.eval.length ? 'eval' : null);
    if (split) selectStep(split, sp[split][sp[split].length - 1], 0);
  }

  async function main() {
    wire();
    try {
      await refreshIndex();
    } catch (e) {
      status('cannot load the run: ' + e.message);
      return;
    }
    await Promise.all([loadMetrics(), loadConfig()]);
    initialStep();
    if (DATA) status('exported file · ' + DATA.index.export.full_steps + ' of ' + DATA.index.export.steps + ' steps in full');
    else { liveStatus(); setInterval(poll, 3000); }
    document.body.dataset.ready = '1';
  }

  main();
})();
