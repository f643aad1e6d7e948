// The instances list (live: polled every 2 s, with a text filter and a state filter) and one
// instance's page (details, security groups, volumes, CPU and network charts, console output,
// actions: stop, start, reboot, terminate, change type, create image, attach a volume, change
// security groups).
// Actions are plain API calls: when the API refuses one, its error (code and message) is shown
// as it came.
import { api, listAll } from './api.js';
import { monitoring } from './charts.js';
import { clear, errorBox, field, h, link, nameOf } from './dom.js';
import { DEVICES } from './storage.js';

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

const STATES = ['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'];

export async function instancesPage(root, pg) {
  document.title = 'Instances · Kumo';
  const filter = h('input', { type: 'search', name: 'filter', placeholder: 'id, name, state, IP, host…' });
  // The state filter is exact ("stopped" only), where words of the text filter match anywhere.
  const stateSel = h('select', { name: 'state' }, h('option', { value: '' }, 'All states'),
    STATES.map((st) => h('option', { value: st }, st)));
  const body = h('tbody');
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const err = errorBox();
  const table = h('table', { class: 'list', id: 'instances' },
    h('caption', { class: 'sr-only' }, 'Instances'),
    h('thead', {}, h('tr', {}, COLUMNS.map(([t]) => h('th', { scope: 'col' }, t)))), body);
  let items = [];
  const draw = () => {
    const shown = items.filter((i) => (!stateSel.value || i.state === stateSel.value)
      && matches(i, filter.value.trim()));
    clear(body, shown.map((i) => h('tr', { 'data-instance-id': i.instance_id },
      COLUMNS.map(([t, cell]) => h('td', { 'data-label': t }, cell(i))))));
    clear(count, `${shown.length} of ${items.length} instances`);
  };
  filter.addEventListener('input', draw);
  stateSel.addEventListener('change', draw);
  clear(root, h('div', { class: 'bar' }, h('h1', {}, 'Instances'), link('/launch', 'Launch instance')),
    h('div', { class: 'inline' }, field('Filter', filter), field('State', stateSel)),
    err, count, h('div', { class: 'scroll' }, table));
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
    ['Image', link(`/images/${i.image_id}`, i.image_id)], ['Key pair', i.key_name || ''], ['Root disk', `${i.root_disk_gib} GiB`],
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
        // run() may answer a function that writes its own notice once the page is refreshed.
        const after = await (opts.run ? opts.run() : api('POST', `/v1/instances/${enc}/${path}`));
        clear(notice, `${label}: requested.`);
        await refresh();
        if (typeof after === 'function') after();
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

  // Create image: the API answers the new (pending) image at once; its page follows the capture.
  const imgName = h('input', { name: 'image_name', maxlength: '128' });
  const imgDesc = h('input', { name: 'image_description', maxlength: '255' });
  const noReboot = h('input', { type: 'checkbox', name: 'no_reboot', id: 'no-reboot' });
  const createImage = act('Create image', null, {
    run: async () => {
      const body = { name: imgName.value, no_reboot: noReboot.checked };
      if (imgDesc.value) body.description = imgDesc.value;
      const img = await api('POST', `/v1/instances/${enc}/image`, body);
      imgName.value = '';
      imgDesc.value = '';
      return () => clear(notice, 'Image ', link(`/images/${img.image_id}`, img.image_id), ` (${img.name}) is being created.`);
    },
  });
  const imageBox = h('section', { 'aria-labelledby': 'ci-h', id: 'create-image' }, h('h2', { id: 'ci-h' }, 'Create image'),
    h('div', { class: 'inline' }, field('Image name', imgName), field('Image description', imgDesc),
      h('div', { class: 'field check' }, noReboot, h('label', { for: 'no-reboot' }, 'No reboot (copy while it runs)')), createImage));

  // Attach a volume: the account's available volumes (the API decides the rest: the
  // instance's state, the device, the per-instance limit) on a device this instance leaves free.
  const volSel = h('select', { name: 'volume_id' });
  const devSel = h('select', { name: 'device' });
  const attachVolume = act('Attach volume', null, {
    run: async () => {
      await api('POST', `/v1/volumes/${encodeURIComponent(volSel.value)}/attach`,
        { instance_id: inst.instance_id, device: devSel.value });
      const what = `${volSel.value} as ${devSel.value}`;
      return () => clear(notice, `Attach volume: attaching ${what}.`);
    },
  });
  const attachRow = h('div', { class: 'inline' }, field('Volume', volSel, 'Available volumes of this account.'),
    field('Device', devSel), attachVolume);
  const noVolume = h('p', { hidden: true }, 'No available volume to attach: create one on the ', link('/volumes', 'Volumes'), ' page.');
  async function loadVolumeChoices() {
    const avail = await listAll('/v1/volumes', { status: 'available' }).catch(() => []);
    attachRow.hidden = !avail.length;
    noVolume.hidden = !!avail.length;
    const keep = volSel.value;
    clear(volSel, avail.length ? avail.map((v) => h('option', { value: v.volume_id, selected: v.volume_id === keep },
      `${v.volume_id}${nameOf(v) ? ` (${nameOf(v)})` : ''} · ${v.size_gib} GiB`)) : h('option', { value: '' }, 'No available volume'));
    const used = new Set((inst.block_device_mappings || []).map((b) => (b.device_name || '').slice(-1)));
    const keepDev = devSel.value;
    clear(devSel, DEVICES.filter((d) => !used.has(d.slice(-1))).map((d) => h('option', { value: d, selected: d === keepDev }, d)));
  }

  // Change security groups: checkboxes of the VPC's groups, the current ones checked; one PUT.
  const groupChoices = h('fieldset', { class: 'choices', id: 'group-choices' }, h('legend', {}, 'Security groups of the VPC'));
  const changeGroups = act('Change security groups', null, {
    run: async () => {
      const ids = [...groupChoices.querySelectorAll('input:checked')].map((c) => c.value);
      await api('PUT', `/v1/instances/${enc}/security-groups`, { security_group_ids: ids });
      return () => { clear(notice, 'Security groups changed.'); drawGroupChoices(); };
    },
  });
  async function drawGroupChoices() {
    const vpcGroups = inst.vpc_id ? await listAll('/v1/security-groups', { vpc_id: inst.vpc_id }).catch(() => []) : [];
    clear(groupChoices, h('legend', {}, 'Security groups of the VPC'),
      vpcGroups.length ? vpcGroups.map((g) => {
        const cid = `isg-${g.group_id}`;
        return h('div', { class: 'choice' },
          h('input', { type: 'checkbox', id: cid, value: g.group_id, checked: inst.security_group_ids.includes(g.group_id) }),
          h('label', { for: cid }, h('span', { class: 'main' }, g.group_name),
            h('span', { class: 'hint' }, `${g.group_id}${g.description ? ` · ${g.description}` : ''}`)));
      }) : h('p', {}, 'The instance is in no VPC.'));
  }
  const refreshConsole = h('button', { type: 'button' }, 'Refresh console output');
  const charts = monitoring(inst.instance_id);

  clear(root, h('p', {}, link('/instances', '← Instances')), title, err, notice, actions,
    h('div', { class: 'inline' }, field('Instance type', typeSelect, 'Only while stopped; applies at the next start.'), changeType),
    h('section', { 'aria-labelledby': 'd-h' }, h('h2', { id: 'd-h' }, 'Details'), detailBox),
    h('section', { 'aria-labelledby': 'g-h' }, h('h2', { id: 'g-h' }, 'Security groups'), groups,
      groupChoices, h('div', { class: 'actions' }, changeGroups)),
    h('section', { 'aria-labelledby': 'v-h' }, h('h2', { id: 'v-h' }, 'Volumes'), volumes,
      attachRow, noVolume),
    imageBox,
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
    clear(volumes, vols.length ? vols.map((v) => h('li', { 'data-volume-id': v.volume_id }, h('code', {}, v.device_name), ' ',
      link(`/volumes/${v.volume_id}`, v.volume_id), ` (${v.status})`)) : h('li', {}, 'None besides the root disk'));
    // The choices follow the instance's devices and the account's volumes, unless in use.
    if (document.activeElement !== volSel && document.activeElement !== devSel) await loadVolumeChoices();
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
  await drawGroupChoices();
  await pg.every(3000, async () => {
    try { await refresh(); } catch (e) { if (e.status === 404) { err.show(e); pg.close(); } }
  });
  await pg.every(5000, loadConsole);
  // Samples come every 5 s and points are per minute: a slower refresh is enough.
  await pg.every(15000, async () => {
    try { await charts.refresh(); } catch (e) { /* shown as "No data yet"; the page goes on */ }
  });
}
