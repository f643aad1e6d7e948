// Security groups: the list (with a form to create one in a VPC) and one group's page with its
// inbound and outbound rule editors (add a rule: protocol, ports, source or destination as a CIDR
// or another group, description; remove a rule) and delete. Every change is one API call
// (POST .../ingress|egress, .../revoke, DELETE): what the API refuses is shown as it said it.
import { api, listAll } from './api.js';
import { clear, errorBox, field, h, link } from './dom.js';

const PROTOCOLS = [['tcp', 'TCP'], ['udp', 'UDP'], ['icmp', 'ICMP'], ['all', 'All traffic']];
// The rules users add most, as EC2's console offers them.
const PRESETS = [['', 'Custom'], ['ssh', 'SSH (22)'], ['http', 'HTTP (80)'], ['https', 'HTTPS (443)']];
const PRESET_PORTS = { ssh: 22, http: 80, https: 443 };

function ports(r) {
  if (r.protocol === 'all') return 'all';
  if (r.protocol === 'icmp') {
    return r.icmp_type === -1 || r.icmp_type === null ? 'all types' : `type ${r.icmp_type}${r.icmp_code >= 0 ? ` code ${r.icmp_code}` : ''}`;
  }
  return r.from_port === r.to_port ? String(r.from_port) : `${r.from_port}-${r.to_port}`;
}

export async function groupsPage(root, pg) {
  document.title = 'Security groups · Kumo';
  const err = errorBox();
  const body = h('tbody');
  const vpcSelect = h('select', { name: 'vpc_id' });
  const name = h('input', { name: 'group_name', required: true, maxlength: '255' });
  const desc = h('input', { name: 'description', maxlength: '255' });
  const create = h('button', { type: 'submit' }, 'Create security group');
  const form = h('form', { class: 'card', 'aria-labelledby': 'sg-new' },
    h('h2', { id: 'sg-new' }, 'Create a security group'),
    field('VPC', vpcSelect), field('Group name', name), field('Description', desc), err, create);
  clear(root, h('h1', {}, 'Security groups'),
    h('table', { class: 'list' }, h('caption', { class: 'sr-only' }, 'Security groups'),
      h('thead', {}, h('tr', {}, ['Group', 'Name', 'VPC', 'Inbound rules', 'Outbound rules', 'Description']
        .map((c) => h('th', { scope: 'col' }, c)))), body),
    form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    create.disabled = true;
    try {
      const g = await api('POST', '/v1/security-groups',
        { group_name: name.value, description: desc.value, vpc_id: vpcSelect.value });
      location.hash = `#/security-groups/${encodeURIComponent(g.group_id)}`;
    } catch (e) {
      err.show(e);
    } finally {
      create.disabled = false;
    }
  });
  // Creating waits for the VPC list: a group made before it arrived would name no VPC.
  create.disabled = true;
  const vpcs = await listAll('/v1/vpcs');
  clear(vpcSelect, vpcs.map((v) => h('option', { value: v.vpc_id },
    `${v.vpc_id} (${v.cidr_block}${v.is_default ? ', default' : ''})`)));
  create.disabled = false;
  await pg.every(5000, async () => {
    const groups = await listAll('/v1/security-groups');
    clear(body, groups.map((g) => h('tr', { 'data-group-id': g.group_id },
      h('td', { 'data-label': 'Group' }, link(`/security-groups/${g.group_id}`, g.group_id)),
      h('td', { 'data-label': 'Name' }, g.group_name),
      h('td', { 'data-label': 'VPC' }, g.vpc_id || '–'),
      h('td', { 'data-label': 'Inbound rules' }, String(g.ingress_rules.length)),
      h('td', { 'data-label': 'Outbound rules' }, String(g.egress_rules.length)),
      h('td', { 'data-label': 'Description' }, g.description || '–'))));
  });
}

// One direction's rules: a table with a Remove button per rule, and the form that adds one.
function ruleEditor(group, direction, others, reload) {
  const inbound = direction === 'ingress';
  const title = inbound ? 'Inbound rules' : 'Outbound rules';
  const peerWord = inbound ? 'Source' : 'Destination';
  const err = errorBox();
  const rows = (inbound ? group.ingress_rules : group.egress_rules).map((r) => {
    const remove = h('button', { type: 'button', class: 'danger',
      'aria-label': `Remove ${direction} rule ${r.rule_id}` }, 'Remove');
    remove.addEventListener('click', async () => {
      err.hide();
      remove.disabled = true;
      try {
        await api('POST', `/v1/security-groups/${encodeURIComponent(group.group_id)}/${direction}/revoke`,
          { rule_ids: [r.rule_id] });
        await reload();
      } catch (e) {
        err.show(e);
        remove.disabled = false;
      }
    });
    // data-label: the column's name, shown before each cell where rows become cards (phones).
    return h('tr', { 'data-rule-id': r.rule_id }, h('td', { 'data-label': 'Protocol' }, r.protocol),
      h('td', { 'data-label': 'Ports' }, ports(r)),
      h('td', { 'data-label': peerWord }, r.cidr_ipv4 || r.peer_group_id || ''),
      h('td', { 'data-label': 'Description' }, r.description || '–'), h('td', { class: 'cell-action' }, remove));
  });
  const preset = h('select', { name: 'preset' }, PRESETS.map(([v, l]) => h('option', { value: v }, l)));
  const proto = h('select', { name: 'protocol' }, PROTOCOLS.map(([v, l]) => h('option', { value: v }, l)));
  const from = h('input', { name: 'from_port', inputmode: 'numeric', size: '6' });
  const to = h('input', { name: 'to_port', inputmode: 'numeric', size: '6' });
  const kind = h('select', { name: 'peer_kind' },
    h('option', { value: 'cidr' }, 'CIDR'), h('option', { value: 'group' }, 'Security group'));
  const cidr = h('input', { name: 'cidr_ipv4', value: '0.0.0.0/0', size: '18' });
  const peer = h('select', { name: 'peer_group_id' },
    others.map((g) => h('option', { value: g.group_id }, `${g.group_id} (${g.group_name})`)));
  const desc = h('input', { name: 'description', maxlength: '255' });
  const add = h('button', { type: 'submit' }, `Add ${inbound ? 'inbound' : 'outbound'} rule`);
  const cidrField = field(`${peerWord} CIDR`, cidr);
  const peerField = field(`${peerWord} group`, peer);
  peerField.hidden = true;
  preset.addEventListener('change', () => {
    const p = PRESET_PORTS[preset.value];
    if (p) { proto.value = 'tcp'; from.value = String(p); to.value = String(p); }
  });
  kind.addEventListener('change', () => {
    cidrField.hidden = kind.value !== 'cidr';
    peerField.hidden = kind.value !== 'group';
  });
  const form = h('form', { class: 'rule-form', 'aria-label': `Add ${inbound ? 'an inbound' : 'an outbound'} rule` },
    field('Type', preset), field('Protocol', proto), field('From port', from), field('To port', to),
    field(peerWord, kind), cidrField, peerField, field('Description', desc), add);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    const rule = { protocol: proto.value, description: desc.value || undefined };
    if (proto.value === 'tcp' || proto.value === 'udp') {
      // Sent as typed (a number when it is one): the API says what is wrong with a port.
      const num = (s) => (/^\d+$/.test(s.trim()) ? Number(s.trim()) : s);
      rule.from_port = num(from.value);
      rule.to_port = num(to.value || from.value);
    }
    if (kind.value === 'cidr') rule.cidr_ipv4 = cidr.value.trim();
    else rule.peer_group_id = peer.value;
    add.disabled = true;
    try {
      await api('POST', `/v1/security-groups/${encodeURIComponent(group.group_id)}/${direction}`,
        { rules: [rule] });
      await reload();
    } catch (e) {
      err.show(e);
    } finally {
      add.disabled = false;
    }
  });
  const id = `${direction}-h`;
  return h('section', { 'aria-labelledby': id, id: `${direction}-rules` },
    h('h2', { id }, title),
    h('table', { class: 'list rules' },
      h('thead', {}, h('tr', {}, ['Protocol', 'Ports', peerWord, 'Description', '']
        .map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: '5', class: 'cell-action' }, 'No rules')))),
    err, form);
}

export async function groupPage(root, pg, groupId) {
  const enc = encodeURIComponent(groupId);
  const err = errorBox();
  async function reload() {
    const g = await api('GET', `/v1/security-groups/${enc}`);
    document.title = `${g.group_name} · Kumo`;
    // Peers: the groups of the same VPC, this one included (a group may allow itself).
    const others = await listAll('/v1/security-groups', g.vpc_id ? { vpc_id: g.vpc_id } : {});
    const del = h('button', { type: 'button', class: 'danger' }, 'Delete security group');
    del.addEventListener('click', async () => {
      err.hide();
      if (!del.dataset.armed) { del.dataset.armed = '1'; del.textContent = 'Confirm: delete'; return; }
      try {
        await api('DELETE', `/v1/security-groups/${enc}`);
        location.hash = '#/security-groups';
      } catch (e) {
        err.show(e);
      }
    });
    clear(root, h('p', {}, link('/security-groups', '← Security groups')),
      h('h1', {}, `${g.group_name} (${g.group_id})`), err,
      h('dl', { class: 'details' },
        h('dt', {}, 'VPC'), h('dd', {}, g.vpc_id || '–'),
        h('dt', {}, 'Description'), h('dd', {}, g.description || '–'),
        h('dt', {}, 'Default group'), h('dd', {}, g.is_default ? 'yes' : 'no')),
      ruleEditor(g, 'ingress', others, reload), ruleEditor(g, 'egress', others, reload),
      h('div', { class: 'actions' }, del));
  }
  await reload();
}
