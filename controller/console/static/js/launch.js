// The launch wizard, in EC2's order: name and tags -> image (all / public / my images) ->
// instance type -> key pair -> network (security groups, or a new one with preset rules) ->
// storage (root size, extra volumes) -> summary (the API's own estimate, line by line) ->
// launch, then the new instance's page. It only gathers a RunInstancesRequest: the API
// validates it (the estimate and the launch answer the same errors) and the wizard shows what
// the API says. A new security group is made at launch, just before the instance (POST the
// group, POST its ingress rules): any refusal stops there, shown verbatim, and nothing launches.
import { api, currentSession, listAll } from './api.js';
import { append, clear, errorBox, field, h, money } from './dom.js';

const GIB = 1024 ** 3;
const STEPS = ['Name and tags', 'Image', 'Instance type', 'Key pair', 'Network', 'Storage', 'Summary'];
// The inline security group's rule presets (TCP, one port each), as groups.js offers them.
const RULE_PRESETS = [['ssh', 'SSH (22)', 22], ['http', 'HTTP (80)', 80], ['https', 'HTTPS (443)', 443]];
// Extra volumes' device names (the guest sees vdf, vdg, ...); /dev/sda1 is the root device.
const DEVICES = 'fghijklmnopqrstuvwxyz'.split('').map((c) => `/dev/sd${c}`);
const IMAGE_FILTERS = [['all', 'All'], ['public', 'Public'], ['mine', 'My images']];

function radioList(name, legend, options, onPick) {
  // options: [{value, label, detail, checked}]
  const box = h('fieldset', { class: 'choices' }, h('legend', {}, legend));
  for (const o of options) {
    const id = `${name}-${o.value}`;
    const input = h('input', { type: 'radio', name, id, value: o.value, checked: !!o.checked });
    input.addEventListener('change', () => onPick(o.value));
    box.append(h('div', { class: 'choice' }, input,
      h('label', { for: id }, h('span', { class: 'main' }, o.label), o.detail ? h('span', { class: 'hint' }, o.detail) : null)));
  }
  if (!options.length) box.append(h('p', {}, 'None available.'));
  return box;
}

function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/x-pem-file' }));
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export async function launchPage(root, pg, go) {
  document.title = 'Launch instance · Kumo';
  const [images, types, keys, vpcs, snapshots] = await Promise.all([
    listAll('/v1/images'), listAll('/v1/instance-types'), listAll('/v1/key-pairs'), listAll('/v1/vpcs'),
    listAll('/v1/snapshots').catch(() => [])]);
  const me = (currentSession() || {}).account_id;
  const st = {
    name: '', tags: [], image: null, type: null, key: '', vpc: '', subnet: '', publicIp: '',
    groups: [], root: '', imageFilter: 'all', volumes: [],
    // The inline new group: made at launch (newGroupId once made, so a retried launch reuses it).
    newGroup: { on: false, name: '', description: '', cidr: '0.0.0.0/0', rules: ['ssh'] }, newGroupId: '',
    clientToken: (crypto.randomUUID ? crypto.randomUUID() : String(Date.now())).slice(0, 64),
  };
  const usable = images.filter((i) => i.state === 'available');
  st.image = usable[0] ? usable[0].image_id : null;
  const liveTypes = types.filter((t) => !t.retired);
  st.type = (liveTypes.find((t) => t.name === 't3.micro') || liveTypes[0] || {}).name || null;
  const defaultVpc = vpcs.find((v) => v.is_default);
  st.vpc = defaultVpc ? defaultVpc.vpc_id : '';

  const err = errorBox();
  const stepTitle = h('h2', { id: 'step-title' });
  const stepBody = h('div', { class: 'step' });
  const progress = h('ol', { class: 'steps', 'aria-label': 'Launch steps' });
  const back = h('button', { type: 'button' }, 'Back');
  const next = h('button', { type: 'submit', class: 'primary' }, 'Next');
  const form = h('form', { class: 'card wizard', 'aria-labelledby': 'step-title', novalidate: true },
    stepTitle, stepBody, err, h('div', { class: 'nav' }, back, next));
  clear(root, h('h1', {}, 'Launch an instance'), progress, form);
  let step = 0;

  function request() {
    const tags = {};
    if (st.name) tags.Name = st.name;
    for (const t of st.tags) if (t.key) tags[t.key] = t.value;
    const body = { image: st.image, instance_type: st.type, min_count: 1, max_count: 1, tags, client_token: st.clientToken };
    if (st.key) body.key_name = st.key;
    if (st.subnet) body.subnet_id = st.subnet;
    if (st.publicIp) body.associate_public_ip = st.publicIp === 'yes';
    const groups = [...st.groups, ...(st.newGroup.on && st.newGroupId ? [st.newGroupId] : [])];
    if (groups.length) body.security_group_ids = groups;
    if (st.root) body.root_disk_gib = Number(st.root);
    if (st.volumes.length) {
      body.block_device_mappings = st.volumes.map((v) => {
        const ebs = { delete_on_termination: v.deleteOnTermination };
        if (v.size !== '') ebs.volume_size_gib = Number(v.size);
        if (v.snapshot) ebs.snapshot_id = v.snapshot;
        return { device_name: v.device, ebs };
      });
    }
    return body;
  }

  // Network step: "create a new security group" with preset inbound rules from one CIDR.
  function newGroupBox() {
    const ng = st.newGroup;
    const on = h('input', { type: 'checkbox', id: 'new-group-on', checked: ng.on });
    const name = h('input', { name: 'new_group_name', value: ng.name, maxlength: 255 });
    const desc = h('input', { name: 'new_group_description', value: ng.description, maxlength: 255 });
    const cidr = h('input', { name: 'new_group_cidr', value: ng.cidr, maxlength: 64, autocapitalize: 'none' });
    const rules = h('fieldset', { class: 'choices' }, h('legend', {}, 'Inbound rules (TCP)'),
      RULE_PRESETS.map(([v, label]) => {
        const cb = h('input', { type: 'checkbox', id: `new-group-rule-${v}`, value: v, checked: ng.rules.includes(v) });
        cb.addEventListener('change', () => { ng.rules = RULE_PRESETS.map((p) => p[0]).filter((x) => (x === v ? cb.checked : ng.rules.includes(x))); });
        return h('div', { class: 'choice' }, cb, h('label', { for: cb.id }, label));
      }));
    const details = h('div', { hidden: !ng.on }, field('New group name', name), field('New group description', desc),
      rules, field('Source CIDR', cidr, 'Who may connect, e.g. 203.0.113.0/24; 0.0.0.0/0 is anyone.'));
    on.addEventListener('change', () => { ng.on = on.checked; details.hidden = !on.checked; });
    name.addEventListener('input', () => { ng.name = name.value; st.newGroupId = ''; });
    desc.addEventListener('input', () => { ng.description = desc.value; });
    cidr.addEventListener('input', () => { ng.cidr = cidr.value; });
    return h('fieldset', {}, h('legend', {}, 'New security group'),
      h('div', { class: 'choice' }, on, h('label', { for: on.id }, 'Create a new security group (made when you launch)')), details);
  }

  // Storage step: extra volumes, each a new volume per instance (empty, or from a snapshot).
  function volumesBox() {
    const rows = h('div', { class: 'volumes' });
    const draw = () => clear(rows, st.volumes.map((v, n) => {
      const dev = h('select', { name: `volume-device-${n}` }, DEVICES.map((d) => h('option', { value: d, selected: d === v.device }, d)));
      const size = h('input', { type: 'number', name: `volume-size-${n}`, min: 1, value: v.size, inputmode: 'numeric' });
      const snap = h('select', { name: `volume-snapshot-${n}` }, h('option', { value: '' }, 'None (empty volume)'),
        snapshots.filter((x) => x.state === 'completed').map((x) => h('option', { value: x.snapshot_id, selected: x.snapshot_id === v.snapshot },
          `${x.snapshot_id} (${x.volume_size_gib} GiB)`)));
      const keep = h('input', { type: 'checkbox', id: `volume-dot-${n}`, checked: v.deleteOnTermination });
      dev.addEventListener('change', () => { v.device = dev.value; });
      size.addEventListener('input', () => { v.size = size.value; });
      // A snapshot's volume is its size unless asked bigger: the size field empties to say so.
      snap.addEventListener('change', () => { v.snapshot = snap.value; if (v.snapshot) { v.size = size.value = ''; } });
      keep.addEventListener('change', () => { v.deleteOnTermination = keep.checked; });
      const rm = h('button', { type: 'button', 'aria-label': `Remove volume ${n + 1}` }, 'Remove');
      rm.addEventListener('click', () => { st.volumes.splice(n, 1); draw(); });
      return h('div', { class: 'inline', 'data-volume': String(n + 1) }, field(`Volume ${n + 1} device`, dev),
        field(`Volume ${n + 1} size (GiB)`, size), field(`Volume ${n + 1} snapshot`, snap),
        h('div', { class: 'choice' }, keep, h('label', { for: keep.id }, `Delete volume ${n + 1} on termination`)), rm);
    }));
    draw();
    const add = h('button', { type: 'button' }, 'Add volume');
    add.addEventListener('click', () => {
      const device = DEVICES.find((d) => !st.volumes.some((v) => v.device === d)) || DEVICES[0];
      st.volumes.push({ device, size: '1', snapshot: '', deleteOnTermination: true });
      draw();
      rows.querySelector(`[name="volume-size-${st.volumes.length - 1}"]`).focus();
    });
    return h('fieldset', {}, h('legend', {}, 'Extra volumes'), rows, add);
  }

  // At launch, before the instance: the inline group and its rules, each one API call. A refused
  // rule deletes the group just made (best effort), so a refused launch leaves nothing behind.
  async function makeNewGroup() {
    const ng = st.newGroup;
    if (!ng.on || st.newGroupId) return;
    const body = { group_name: ng.name, description: ng.description };
    if (st.vpc) body.vpc_id = st.vpc;
    const g = await api('POST', '/v1/security-groups', body);
    const gid = encodeURIComponent(g.group_id);
    if (ng.rules.length) {
      try {
        await api('POST', `/v1/security-groups/${gid}/ingress`, { rules: RULE_PRESETS.filter((p) => ng.rules.includes(p[0]))
          .map(([v, , port]) => ({ protocol: 'tcp', from_port: port, to_port: port, cidr_ipv4: ng.cidr, description: `${v} (launch wizard)` })) });
      } catch (e) {
        await api('DELETE', `/v1/security-groups/${gid}`).catch(() => {});
        throw e;
      }
    }
    st.newGroupId = g.group_id;
  }

  const steps = [
    // 1. name and tags
    () => {
      const name = h('input', { name: 'name', value: st.name, maxlength: 256 });
      name.addEventListener('input', () => { st.name = name.value; });
      const rows = h('div', { class: 'tags' });
      const drawTags = () => clear(rows, st.tags.map((t, n) => {
        const k = h('input', { value: t.key, name: `tag-key-${n}` });
        const v = h('input', { value: t.value, name: `tag-value-${n}` });
        k.addEventListener('input', () => { t.key = k.value; });
        v.addEventListener('input', () => { t.value = v.value; });
        const rm = h('button', { type: 'button', 'aria-label': `Remove tag ${n + 1}` }, 'Remove');
        rm.addEventListener('click', () => { st.tags.splice(n, 1); drawTags(); });
        return h('div', { class: 'inline' }, field(`Tag ${n + 1} key`, k), field(`Tag ${n + 1} value`, v), rm);
      }));
      drawTags();
      const add = h('button', { type: 'button' }, 'Add tag');
      add.addEventListener('click', () => { st.tags.push({ key: '', value: '' }); drawTags(); });
      return [field('Name', name, 'Saved as the Name tag.'), rows, add];
    },
    // 2. image: all the caller may launch, or only public ones, or only the account's own
    // (owner_account_id; an image shared with the account is neither public nor its own).
    () => {
      const list = h('div');
      const whose = (i) => [i.public ? 'public' : null, i.owner_account_id === me ? 'own' : null,
        !i.public && i.owner_account_id !== me ? 'shared with you' : null].filter(Boolean).join(', ');
      const draw = () => {
        const shown = usable.filter((i) => st.imageFilter === 'all' || (st.imageFilter === 'public' ? i.public : i.owner_account_id === me));
        clear(list, radioList('image', 'Machine image', shown.map((i) => ({
          value: i.image_id, label: i.name, checked: i.image_id === st.image,
          detail: `${i.image_id} · ${whose(i)} · ${i.architecture} · ${Math.ceil(i.virtual_size / GIB)} GiB${i.description ? ' · ' + i.description : ''}`,
        })), (v) => { st.image = v; }));
      };
      const filter = h('fieldset', { class: 'inline filter' }, h('legend', {}, 'Show'),
        IMAGE_FILTERS.map(([v, label]) => {
          const id = `image-filter-${v}`;
          const r = h('input', { type: 'radio', name: 'image_filter', id, value: v, checked: st.imageFilter === v });
          r.addEventListener('change', () => { st.imageFilter = v; draw(); });
          return h('span', { class: 'choice' }, r, h('label', { for: id }, label));
        }));
      draw();
      return [filter, list];
    },
    // 3. instance type
    () => radioList('type', 'Instance type', liveTypes.map((t) => ({
      value: t.name, label: t.name, checked: t.name === st.type,
      detail: `${t.vcpus} vCPU · ${t.memory_mib} MiB · ${money(t.hourly_price)}/hour`,
    })), (v) => { st.type = v; }),
    // 4. key pair
    () => {
      const sel = h('select', { name: 'key_name' }, h('option', { value: '' }, 'No key pair'),
        keys.map((k) => h('option', { value: k.name, selected: k.name === st.key }, k.name)));
      sel.addEventListener('change', () => { st.key = sel.value; });
      const newName = h('input', { name: 'new_key_name', maxlength: 128 });
      const create = h('button', { type: 'button' }, 'Create and download');
      const note = h('p', { role: 'status' });
      create.addEventListener('click', async () => {
        err.hide();
        try {
          const kp = await api('POST', '/v1/key-pairs', { name: newName.value });
          keys.push(kp);
          sel.append(h('option', { value: kp.name }, kp.name));
          sel.value = st.key = kp.name;
          if (kp.private_key) download(`${kp.name}.pem`, kp.private_key);
          clear(note, `Key pair ${kp.name} created; its private key was downloaded (it is shown only once).`);
        } catch (e) { err.show(e); }
      });
      return [field('Key pair', sel),
        h('fieldset', {}, h('legend', {}, 'Or create a new key pair'), field('New key pair name', newName), create, note)];
    },
    // 5. network
    async () => {
      const vpcSel = h('select', { name: 'vpc' },
        vpcs.length ? null : h('option', { value: '' }, 'Default VPC (created at launch)'),
        vpcs.map((v) => h('option', { value: v.vpc_id, selected: v.vpc_id === st.vpc },
          `${v.vpc_id} ${v.cidr_block}${v.is_default ? ' (default)' : ''}`)));
      const subnetSel = h('select', { name: 'subnet' });
      const pub = h('select', { name: 'public_ip' },
        h('option', { value: '' }, 'Subnet setting'), h('option', { value: 'yes', selected: st.publicIp === 'yes' }, 'Enable'),
        h('option', { value: 'no', selected: st.publicIp === 'no' }, 'Disable'));
      pub.addEventListener('change', () => { st.publicIp = pub.value; });
      const groupBox = h('fieldset', { class: 'choices' }, h('legend', {}, 'Security groups'));
      const fill = async () => {
        st.vpc = vpcSel.value;
        const [subnets, groups] = st.vpc
          ? await Promise.all([listAll('/v1/subnets', { vpc_id: st.vpc }), listAll('/v1/security-groups', { vpc_id: st.vpc })])
          : [[], []];
        if (!subnets.some((s) => s.subnet_id === st.subnet)) st.subnet = '';
        st.groups = st.groups.filter((g) => groups.some((x) => x.group_id === g));
        clear(subnetSel, h('option', { value: '' }, 'Default subnet'), subnets.map((s) =>
          h('option', { value: s.subnet_id, selected: s.subnet_id === st.subnet },
            `${s.subnet_id} ${s.cidr_block}${s.map_public_ip_on_launch ? ' (public IPs on launch)' : ''}`)));
        clear(groupBox, h('legend', {}, 'Security groups'),
          groups.length ? null : h('p', {}, "The VPC's default group."),
          groups.map((g) => {
            const id = `sg-${g.group_id}`;
            const cb = h('input', { type: 'checkbox', id, value: g.group_id, checked: st.groups.includes(g.group_id) });
            cb.addEventListener('change', () => {
              st.groups = cb.checked ? [...st.groups, g.group_id] : st.groups.filter((x) => x !== g.group_id);
            });
            return h('div', { class: 'choice' }, cb, h('label', { for: id },
              h('span', { class: 'main' }, g.group_name), h('span', { class: 'hint' }, `${g.group_id}${g.description ? ' · ' + g.description : ''}`)));
          }),
          h('span', { class: 'hint' }, 'None picked: the VPC\'s default group.'));
      };
      vpcSel.addEventListener('change', () => { st.newGroupId = ''; fill().catch((e) => err.show(e)); });
      subnetSel.addEventListener('change', () => { st.subnet = subnetSel.value; });
      await fill();
      return [field('VPC', vpcSel), field('Subnet', subnetSel), field('Auto-assign public IP', pub), groupBox, newGroupBox()];
    },
    // 6. storage
    () => {
      const img = usable.find((i) => i.image_id === st.image);
      const min = img ? Math.max(1, Math.ceil(img.virtual_size / GIB)) : 1;
      const size = h('input', { type: 'number', name: 'root_size', min, max: 16384, value: st.root || String(min), inputmode: 'numeric' });
      st.root = st.root || String(min);
      size.addEventListener('input', () => { st.root = size.value; });
      return [field('Root volume size (GiB)', size, `At least the image's ${min} GiB.`), volumesBox()];
    },
    // 7. summary
    async () => {
      const body = request();
      const t = liveTypes.find((x) => x.name === st.type) || {};
      const img = usable.find((i) => i.image_id === st.image) || {};
      const rows = [['Name', st.name || '–'], ['Image', `${img.name || ''} (${st.image})`],
        ['Instance type', `${st.type} (${t.vcpus} vCPU, ${t.memory_mib} MiB)`], ['Key pair', st.key || 'none'],
        ['VPC', st.vpc || 'default'], ['Subnet', st.subnet || 'default'],
        ['Auto-assign public IP', st.publicIp ? (st.publicIp === 'yes' ? 'enable' : 'disable') : 'subnet setting'],
        ['Security groups', [...st.groups, ...(st.newGroup.on ? [`new group ${st.newGroup.name} (${st.newGroup.rules.join(', ') || 'no rules'} from ${st.newGroup.cidr})`] : [])].join(', ') || 'VPC default'],
        ['Root volume', `${st.root} GiB`]];
      for (const v of st.volumes) {
        rows.push([`Volume ${v.device}`, `${v.size || 'snapshot\'s size'}${v.size ? ' GiB' : ''}${v.snapshot ? ` from ${v.snapshot}` : ''}${v.deleteOnTermination ? ', deleted on termination' : ', kept on termination'}`]);
      }
      for (const [k, v] of Object.entries(body.tags)) if (k !== 'Name') rows.push([`Tag ${k}`, v]);
      const cost = h('p', { id: 'estimate', 'aria-live': 'polite' }, 'Estimating…');
      const lines = h('div', { class: 'scroll' });
      const out = [h('dl', { class: 'details' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])), cost, lines];
      try {
        const est = await api('POST', '/v1/instances/estimate', body);
        clear(cost, 'Estimated cost: ', h('strong', { id: 'hourly' }, `${money(est.hourly, est.currency)} per hour`),
          ', ', h('strong', { id: 'monthly' }, `${money(est.monthly, est.currency)} per month`), ` (${est.month_hours} hours)`);
        // Line by line (instance hours, root disk, each extra volume, public IPv4), as the API priced them.
        if (est.lines) {
          clear(lines, h('table', { class: 'list', id: 'estimate-lines' }, h('caption', { class: 'sr-only' }, 'Estimate by item'),
            h('thead', {}, h('tr', {}, ['Item', 'Per hour', 'Per month'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', {}, est.lines.map((ln) => h('tr', {},
              h('td', { 'data-label': 'Item' }, ln.what),
              h('td', { 'data-label': 'Per hour' }, money(ln.hourly, est.currency)),
              h('td', { 'data-label': 'Per month' }, money(ln.monthly, est.currency)))))));
        }
      } catch (e) {
        clear(cost);
        err.show(e);
      }
      return out;
    },
  ];

  async function show(n) {
    step = n;
    err.hide();
    clear(progress, STEPS.map((s, k) => h('li', { 'aria-current': k === step ? 'step' : null, class: k < step ? 'done' : '' }, s)));
    clear(stepTitle, `Step ${step + 1} of ${STEPS.length}: ${STEPS[step]}`);
    clear(stepBody, 'Loading…');
    let content;
    try { content = await steps[step](); } catch (e) { content = null; err.show(e); }
    clear(stepBody);
    append(stepBody, content);
    back.disabled = step === 0;
    next.textContent = step === STEPS.length - 1 ? 'Launch instance' : 'Next';
    const first = stepBody.querySelector('input, select, button');
    (first || stepTitle).focus();
  }

  back.addEventListener('click', () => { if (step > 0) show(step - 1); });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (step < STEPS.length - 1) { await show(step + 1); return; }
    next.disabled = true;
    err.hide();
    try {
      await makeNewGroup();
      const r = await api('POST', '/v1/instances', request());
      go(`/instances/${r.instances[0].instance_id}`);
    } catch (e) {
      err.show(e);
    } finally {
      next.disabled = false;
    }
  });
  stepTitle.tabIndex = -1;
  await show(0);
}
