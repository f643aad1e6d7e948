// The instances list (live: polled every 2 s, with a text filter) and one instance's page
// (details, security groups, volumes, CPU and network charts, console output, actions). Actions are plain API calls:
// when the API refuses one, its error (code and message) is shown as it came.
import { api, listAll } from './api.js';
import { monitoring } from './charts.js';
import { clear, errorBox, field, h, link, nameOf } from './dom.js';

const COLUMNS = [
  ['Instance', (i) => link(`/instances/${i.instance_id}`, i.instance_id)],
  ['Name', (i) => nameOf(i)],
  ['State', (i) => h('span', { class: `badge state-${i.state}` }, i.state)],
  ['Status', (i) => i.instance_status],
  ['Type', (i) => i.instance_type],
  ['Private IP', (i) => i.private_ip || '–'],
  ['Public IP', (i) => i.public_ip || '–'],
  ['Subnet', (i) => i.subnet_id || '–'],
  ['Host', (i) => i.host_id || '–'],
];

function matches(i, text) {
  if (!text) return true;
  const hay = [i.instance_id, nameOf(i), i.state, i.instance_status, i.instance_type, i.private_ip,
    i.public_ip, i.subnet_id, i.host_id, ...Object.values(i.tags || {})].join(' ').toLowerCase();
  return text.toLowerCase().split(/\s+/).filter(Boolean).every((w) => hay.includes(w));
}

export async function instancesPage(root, pg) {
  document.title = 'Instances · Kumo';
  const filter = h('input', { type: 'search', name: 'filter', placeholder: 'id, name, state, IP, host…' });
  const body = h('tbody');
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const err = errorBox();
  const table = h('table', { class: 'list', id: 'instances' },
    h('caption', { class: 'sr-only' }, 'Instances'),
    h('thead', {}, h('tr', {}, COLUMNS.map(([t]) => h('th', { scope: 'col' }, t)))), body);
  let items = [];
  const draw = () => {
    const shown = items.filter((i) => matches(i, filter.value.trim()));
    clear(body, shown.map((i) => h('tr', { 'data-instance-id': i.instance_id },
      COLUMNS.map(([t, cell]) => h('td', { 'data-label': t }, cell(i))))));
    clear(count, `${shown.length} of ${items.length} instances`);
  };
  filter.addEventListener('input', draw);
  clear(root, h('div', { class: 'bar' }, h('h1', {}, 'Instances'), link('/launch', 'Launch instance')),
    field('Filter', filter), err, count, h('div', { class: 'scroll' }, table));
  await pg.every(2000, async () => {
    try {
      items = await listAll('/v1/instances');
      items.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      if (pg.alive) draw();
      err.hide();
    } catch (e) { err.show(e); }
  });
}

function details(i) {
  const rows = [
    ['Instance ID', i.instance_id], ['Name', nameOf(i)], ['State', i.state],
    ['Reason', i.state_reason ? `${i.state_reason.code}: ${i.state_reason.message}` : ''],
    ['Instance status', i.instance_status], ['System status', i.system_status],
    ['Type', `${i.instance_type} (${i.vcpus} vCPU, ${i.memory_mib} MiB)`],
    ['Image', i.image_id], ['Key pair', i.key_name || ''], ['Root disk', `${i.root_disk_gib} GiB`],
    ['VPC', i.vpc_id || ''], ['Subnet', i.subnet_id || ''], ['Private IP', i.private_ip || ''],
    ['Public IP', i.public_ip || ''], ['Host', i.host_id || ''], ['Launched', i.launch_time || ''],
  ];
  const tags = Object.entries(i.tags || {}).filter(([k]) => k !== 'Name');
  for (const [k, v] of tags) rows.push([`Tag ${k}`, v]);
  return h('dl', { class: 'details', id: 'details' },
    rows.map(([k, v]) => [h('dt', {}, k), h('dd', { 'data-field': k }, v || '–')]));
}

export async function instancePage(root, pg, id) {
  const enc = encodeURIComponent(id);
  const title = h('h1', {}, id);
  const err = errorBox();
  const notice = h('p', { class: 'notice', role: 'status' });
  const detailBox = h('div');
  const groups = h('ul', { id: 'groups' });
  const volumes = h('ul', { id: 'volumes' });
  const consoleOut = h('pre', { id: 'console-output', class: 'console', tabindex: '0', 'aria-label': 'Console output' });
  const typeSelect = h('select', { name: 'instance_type' });
  let inst = await api('GET', `/v1/instances/${enc}`);
  document.title = `${inst.instance_id} · Kumo`;
  const types = await listAll('/v1/instance-types').catch(() => []);
  clear(typeSelect, types.map((t) => h('option', { value: t.name, selected: t.name === inst.instance_type },
    `${t.name} (${t.vcpus} vCPU, ${t.memory_mib} MiB)`)));

  const act = (label, path, opts = {}) => {
    const b = h('button', { type: 'button', class: opts.danger ? 'danger' : '' }, label);
    b.addEventListener('click', async () => {
      err.hide();
      clear(notice);
      if (opts.confirm && !b.dataset.armed) {
        b.dataset.armed = '1';
        b.textContent = `Confirm: ${label.toLowerCase()}`;
        return;
      }
      delete b.dataset.armed;
      b.textContent = label;
      b.disabled = true;
      try {
        await (opts.run ? opts.run() : api('POST', `/v1/instances/${enc}/${path}`));
        clear(notice, `${label}: requested.`);
        await refresh();
      } catch (e) {
        err.show(e);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  };
  const changeType = act('Change type', null, {
    run: () => api('PATCH', `/v1/instances/${enc}`, { instance_type: typeSelect.value }),
  });
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Instance actions' },
    act('Stop', 'stop'), act('Start', 'start'), act('Reboot', 'reboot'),
    act('Terminate', 'terminate', { danger: true, confirm: true }));
  const refreshConsole = h('button', { type: 'button' }, 'Refresh console output');
  const charts = monitoring(inst.instance_id);

  clear(root, h('p', {}, link('/instances', '← Instances')), title, err, notice, actions,
    h('div', { class: 'inline' }, field('Instance type', typeSelect, 'Only while stopped; applies at the next start.'), changeType),
    h('section', { 'aria-labelledby': 'd-h' }, h('h2', { id: 'd-h' }, 'Details'), detailBox),
    h('section', { 'aria-labelledby': 'g-h' }, h('h2', { id: 'g-h' }, 'Security groups'), groups),
    h('section', { 'aria-labelledby': 'v-h' }, h('h2', { id: 'v-h' }, 'Volumes'), volumes),
    charts.section,
    h('section', { 'aria-labelledby': 'c-h' }, h('h2', { id: 'c-h' }, 'Console output'), refreshConsole, consoleOut));

  const groupCache = {};
  async function refresh() {
    inst = await api('GET', `/v1/instances/${enc}`);
    clear(title, nameOf(inst) ? `${nameOf(inst)} (${inst.instance_id})` : inst.instance_id);
    clear(detailBox, details(inst));
    const gs = await Promise.all(inst.security_group_ids.map(async (g) => {
      if (!groupCache[g]) groupCache[g] = await api('GET', `/v1/security-groups/${encodeURIComponent(g)}`).catch(() => ({ group_id: g }));
      return groupCache[g];
    }));
    clear(groups, gs.length ? gs.map((g) => h('li', {}, h('code', {}, g.group_id), ' ',
      g.group_name || '', g.description ? ` — ${g.description}` : '')) : h('li', {}, 'None'));
    const vols = inst.block_device_mappings || [];
    clear(volumes, vols.length ? vols.map((v) => h('li', {}, h('code', {}, v.device_name || v.device || ''), ' ',
      v.volume_id || '', v.status ? ` (${v.status})` : '')) : h('li', {}, 'None besides the root disk'));
  }
  async function loadConsole() {
    try {
      const c = await api('GET', `/v1/instances/${enc}/console`);
      consoleOut.textContent = c.output || '(no output yet)';
    } catch (e) {
      consoleOut.textContent = `(${e.code}: ${e.message})`;
    }
  }
  refreshConsole.addEventListener('click', loadConsole);
  await pg.every(3000, async () => {
    try { await refresh(); } catch (e) { if (e.status === 404) { err.show(e); pg.close(); } }
  });
  await pg.every(5000, loadConsole);
  // Samples come every 5 s and points are per minute: a slower refresh is enough.
  await pg.every(15000, async () => {
    try { await charts.refresh(); } catch (e) { /* shown as "No data yet"; the page goes on */ }
  });
}
