// QuorumKV dashboard: polls /api/cluster (on the admin port that served this page) once a
// second and redraws. No dependencies; plots are SVG. The server keeps the history.
'use strict';

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2',
  '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#86bcb6'];
const POLL_MS = 1000;
// Points further apart than this are not joined by a line.
const GAP_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const color = (gid) => (gid === 0 ? '#c9ccd1' : PALETTE[(gid - 1) % PALETTE.length]);

// el('td', {class: 'x', 'data-id': 3}, 'text', child...) builds an element; text is never HTML.
function el(tag, attrs, ...children) {
  const e = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const pad = (n) => String(n).padStart(2, '0');
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function num(n) {
  if (n === null || n === undefined) return '–';
  if (n >= 1e9) return (n / 1e9).toFixed(1) + 'G';
  if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return String(Math.round(n * 100) / 100);
}
function bytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + ' GiB';
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + ' MiB';
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + ' KiB';
  return n + ' B';
}
const plural = (n, what) => `${num(n)} ${what}${n === 1 ? '' : 's'}`;
const groupName = (gid) => (gid === 0 ? 'controller' : `group ${gid}`);

function showError(text) {
  const b = $('error');
  b.hidden = !text;
  b.textContent = text || '';
}

function renderShards(d) {
  const grid = $('shards');
  const legend = $('legend');
  const list = $('migrations');
  grid.replaceChildren();
  legend.replaceChildren();
  list.replaceChildren();
  if (!d.config) {
    grid.append(el('p', {}, 'No configuration yet (the controller has not answered).'));
    return;
  }
  const moving = new Map((d.migrations || []).map((m) => [m.shard, m]));
  const owned = new Map();
  d.config.shards.forEach((gid, shard) => {
    owned.set(gid, (owned.get(gid) || 0) + 1);
    const m = moving.get(shard);
    const state = m ? m.state : (gid === 0 ? 'unassigned' : 'serving');
    let title = `shard ${shard}: ${gid === 0 ? 'no group' : groupName(gid)}`;
    if (m) {
      title += `, ${m.state}` + (m.from ? ` from group ${m.from}` : '') +
        (m.progress !== null ? ` (${Math.round(m.progress * 100)}%)` : '');
    }
    const cell = el('div', {
      class: 'shard' + (m ? ' moving' : '') + (gid === 0 ? ' unassigned' : ''),
      'data-shard': shard, 'data-gid': gid, 'data-state': state, title,
      style: `background-color: ${color(gid)}`,
    }, shard);
    if (m && m.progress !== null) {
      cell.append(el('i', { class: 'bar', style: `width: ${Math.round(m.progress * 100)}%` }));
    }
    grid.append(cell);
  });
  for (const gid of [...owned.keys()].sort((a, b) => a - b)) {
    legend.append(el('span', { class: 'chip' },
      el('i', { style: `background: ${color(gid)}` }),
      `${gid === 0 ? 'unassigned' : groupName(gid)} (${owned.get(gid)})`));
  }
  for (const m of d.migrations || []) {
    const pct = m.progress !== null ? ` ${Math.round(m.progress * 100)}%` : '';
    const keys = m.keys !== null && m.of_keys !== null ? ` (${m.keys} of ${m.of_keys} keys)` : '';
    const from = m.from ? ` from group ${m.from}` : '';
    list.append(el('li', { 'data-shard': m.shard, 'data-state': m.state },
      `shard ${m.shard} → group ${m.to}: ${m.state}${pct}${keys}${from}`));
  }
}

// A line chart of points[key] over the last window; returns the chart's box.
function chart(title, unit, points, key, d, stroke) {
  const W = 300, H = 70;
  const start = d.now_ms - d.window_ms;
  const values = points.filter((p) => p[key] !== null);
  const max = Math.max(1e-9, ...values.map((p) => p[key]));
  const top = max * 1.15;
  const x = (t) => ((t - start) / d.window_ms) * W;
  const y = (v) => H - 2 - (v / top) * (H - 6);
  const svg = el('svg:svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  svg.append(el('svg:line', { x1: 0, y1: H - 1, x2: W, y2: H - 1, stroke: '#e3e6eb' }));
  // One line per stretch of regular points: no line across a time no one was looking.
  let run = [];
  const flush = () => {
    if (run.length > 0) {
      const pts = run.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
      svg.append(el('svg:polyline', { points: pts, fill: 'none', stroke, 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
    }
    run = [];
  };
  for (const p of values) {
    if (run.length > 0 && p.t - run[run.length - 1].t > GAP_MS) flush();
    run.push(p);
  }
  flush();
  const last = values.length ? values[values.length - 1][key] : null;
  return el('div', { class: 'chart', 'data-chart': key },
    el('div', { class: 'title' }, el('span', {}, title),
      el('span', {}, 'now ', el('b', {}, last === null ? '–' : `${num(last)} ${unit}`),
        values.length ? `  max ${num(max)}` : '')),
    svg);
}

function renderGroups(d) {
  const box = $('groups');
  box.replaceChildren();
  for (const g of d.groups) {
    const card = el('div', { class: 'group', 'data-gid': g.gid, 'data-leader': g.leader ?? 'none', style: `border-top-color: ${color(g.gid)}` });
    const up = g.members.filter((m) => m.up).length;
    card.append(el('h3', {}, g.name,
      el('span', { class: 'leader' }, g.leader ? `leader ${g.leader}` : 'no leader'),
      el('span', {}, `term ${g.term}`),
      el('span', {}, `${up}/${g.members.length} members up`),
      g.gid === 0 ? null : el('span', {}, `${plural(g.shards, 'shard')}, ${plural(g.keys, 'key')}, ${bytes(g.bytes)}` +
        (g.reached_config !== null ? `, at configuration ${g.reached_config}` : ''))));
    const rows = [el('tr', {}, ...['id', 'address', 'role', 'term', 'commit', 'applied', 'ready'].map((h) => el('th', {}, h)))];
    for (const m of g.members) {
      const attrs = { class: 'member' + (m.up ? '' : ' down') + (m.role === 'leader' ? ' leader' : ''), 'data-id': m.id ?? '', 'data-up': String(m.up), 'data-role': m.role ?? 'down' };
      if (!m.up) {
        rows.push(el('tr', attrs, el('td', {}, m.id ?? '?'), el('td', {}, m.addr),
          el('td', { colspan: 5 }, `down: ${m.error}`)));
        continue;
      }
      const ready = m.ready
        ? el('span', { class: 'ready' }, 'ready')
        : el('span', { class: 'notready', title: m.not_ready_detail || '' }, m.not_ready || 'not ready');
      rows.push(el('tr', attrs, el('td', {}, m.id), el('td', {}, m.addr),
        el('td', {}, el('span', { class: `role ${m.role}` }, m.role)),
        el('td', {}, m.term), el('td', {}, m.commit), el('td', {}, m.applied), el('td', {}, ready)));
    }
    card.append(el('table', {}, ...rows));
    card.append(el('div', { class: 'charts' },
      chart(g.gid === 0 ? 'requests/s' : 'client requests/s', 'ops/s', g.series, 'ops', d,
        g.gid === 0 ? '#6b7280' : color(g.gid)),
      chart('p99 latency', 'ms', g.series, 'p99_ms', d, '#1d2330')));
    box.append(card);
  }
}

function renderEvents(d) {
  const list = $('events');
  list.replaceChildren();
  if (!d.events || d.events.length === 0) {
    list.append(el('li', { class: 'none' }, 'nothing yet'));
    return;
  }
  for (const e of d.events.slice(0, 50)) {
    list.append(el('li', { 'data-gid': e.gid }, el('time', {}, clock(e.t)), e.text));
  }
}

function render(d) {
  showError(d.error);
  if (!d.groups) return;
  $('served-by').textContent = d.served_by
    ? `${groupName(d.served_by.group)}, member ${d.served_by.node}` : '–';
  $('updated').textContent = clock(d.now_ms);
  $('config-num').textContent = d.config ? d.config.num : '–';
  $('config-stale').hidden = !(d.config && d.config.stale);
  const groups = d.groups.filter((g) => g.gid !== 0).length;
  $('counts').textContent = d.config ? `${groups} groups, ${d.config.shards.length} shards` : '';
  $('window').textContent = `requests served per second and their p99 latency, last ${Math.round(d.window_ms / 60000)} min`;
  renderShards(d);
  renderGroups(d);
  renderEvents(d);
}

async function poll() {
  try {
    const r = await fetch('/api/cluster', { cache: 'no-store' });
    render(await r.json());
    $('live').className = 'dot ok';
  } catch (e) {
    showError(`the server that served this page does not answer (${e})`);
    $('live').className = 'dot bad';
  }
  setTimeout(poll, POLL_MS);
}

poll();
