// Networking pages (issue 15): VPCs (list, create, delete; one VPC's page with its subnets, route
// tables, gateways and security groups), subnets (create, toggle auto-assign public IP, delete),
// route tables (create, delete; one table's page: add and remove routes, associate and
// disassociate subnets), internet and NAT gateways, and elastic IPs (allocate, associate with an
// instance, disassociate, release). Every change is one /v1 call; the console decides nothing
// (overlaps, dependencies, targets): what the API refuses is shown as it said it.
import { api, listAll } from './api.js';
import { clear, errorBox, field, h, link, nameOf } from './dom.js';

const enc = encodeURIComponent;
const yes = (b) => (b ? 'yes' : 'no');

function listTable(id, caption, cols, body) {
  return h('div', { class: 'scroll' }, h('table', { class: 'list', id },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))), body));
}

// data-label: the column's name, shown before each cell where rows become cards (phones).
function cell(label, ...content) { return h('td', { 'data-label': label }, ...content); }
function actionCell(...buttons) { return h('td', { class: 'cell-action' }, h('div', { class: 'actions' }, buttons)); }
function rowsOr(rows, cols, text) {
  return rows.length ? rows : h('tr', {}, h('td', { colspan: String(cols) }, text));
}

// One API call behind a button; its refusal goes to err. With confirm, the first click only
// arms the button ("Confirm: ..."), as deleting in EC2's console asks twice.
function actionButton(text, label, err, run, { danger = false, confirm = false } = {}) {
  const b = h('button', { type: 'button', class: danger ? 'danger' : null, 'aria-label': label }, text);
  b.addEventListener('click', async () => {
    err.hide();
    if (confirm && !b.dataset.armed) {
      b.dataset.armed = '1';
      b.textContent = `Confirm: ${text.toLowerCase()}`;
      b.setAttribute('aria-label', `Confirm: ${label.charAt(0).toLowerCase()}${label.slice(1)}`);
      return;
    }
    b.disabled = true;
    try {
      await run();
    } catch (e) {
      err.show(e);
    } finally {
      delete b.dataset.armed;
      b.textContent = text;
      b.setAttribute('aria-label', label);
      b.disabled = false;
    }
  });
  return b;
}

function onSubmit(form, button, err, run) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    button.disabled = true;
    try { await run(); } catch (e) { err.show(e); } finally { button.disabled = false; }
  });
}

// Live redraws every ms; a redraw would drop a half-confirmed delete, so none runs while one is
// armed. A failing redraw after the first is shown in err rather than thrown into a timer; a
// failing first one (e.g. another account's VPC: 404) replaces the page, so its timers stop too.
function live(pg, container, ms, draw, err) {
  let first = true;
  return pg.every(ms, async () => {
    if (container.querySelector('[data-armed]')) return;
    if (first) {
      first = false;
      try { await draw(); } catch (e) { pg.close(); throw e; }
      return;
    }
    try { await draw(); } catch (e) { err.show(e); }
  });
}

function fill(select, items, value, label, keep) {
  const prev = keep ? select.value : null;
  clear(select, items.map((it) => h('option', { value: value(it) }, label(it))));
  if (prev && items.some((it) => value(it) === prev)) select.value = prev;
}

const vpcLabel = (v) => `${v.vpc_id} (${v.cidr_block}${v.is_default ? ', default' : ''})`;
const subnetLabel = (s) => `${s.subnet_id} (${s.cidr_block}, ${s.vpc_id}${s.public ? ', public' : ''})`;
const target = (t) => (t.startsWith('igw-') || t.startsWith('nat-') ? link('/gateways', t) : t);

// ---- VPCs ---------------------------------------------------------------------------------
export async function vpcsPage(root, pg) {
  document.title = 'VPCs · Kumo';
  const err = errorBox();
  const formErr = errorBox();
  const body = h('tbody');
  const cidr = h('input', { name: 'cidr_block', placeholder: '10.0.0.0/16', autocomplete: 'off', spellcheck: 'false' });
  const create = h('button', { type: 'submit' }, 'Create VPC');
  const form = h('form', { class: 'card', 'aria-labelledby': 'vpc-new' },
    h('h2', { id: 'vpc-new' }, 'Create a VPC'),
    field('IPv4 CIDR block', cidr, 'A network between /16 and /28, e.g. 10.0.0.0/16.'), formErr, create);
  clear(root, h('h1', {}, 'VPCs'), err,
    listTable('vpcs', 'VPCs', ['VPC', 'CIDR', 'Default', 'State', 'Internet gateway', 'Main route table', ''], body),
    form);
  async function draw() {
    const vpcs = await listAll('/v1/vpcs');
    clear(body, rowsOr(vpcs.map((v) => h('tr', { 'data-vpc-id': v.vpc_id },
      cell('VPC', link(`/vpcs/${v.vpc_id}`, v.vpc_id), nameOf(v) ? ` ${nameOf(v)}` : ''),
      cell('CIDR', v.cidr_block), cell('Default', yes(v.is_default)), cell('State', v.state),
      cell('Internet gateway', v.internet_gateway_id || '–'),
      cell('Main route table', v.main_route_table_id ? link(`/route-tables/${v.main_route_table_id}`, v.main_route_table_id) : '–'),
      actionCell(actionButton('Delete', `Delete ${v.vpc_id}`, err, async () => {
        await api('DELETE', `/v1/vpcs/${enc(v.vpc_id)}`);
        await draw();
      }, { danger: true, confirm: true })))), 7, 'No VPCs'));
  }
  onSubmit(form, create, formErr, async () => {
    const v = await api('POST', '/v1/vpcs', { cidr_block: cidr.value.trim() });
    location.hash = `#/vpcs/${enc(v.vpc_id)}`;
  });
  await live(pg, body, 10000, draw, err);
}

export async function vpcPage(root, pg, vpcId) {
  const err = errorBox();
  const content = h('div');
  const del = actionButton('Delete VPC', `Delete VPC ${vpcId}`, err, async () => {
    await api('DELETE', `/v1/vpcs/${enc(vpcId)}`);
    location.hash = '#/vpcs';
  }, { danger: true, confirm: true });
  clear(root, h('p', {}, link('/vpcs', '← VPCs')), h('h1', {}, vpcId), err, content, h('div', { class: 'actions' }, del));
  async function draw() {
    const q = { vpc_id: vpcId };
    const v = await api('GET', `/v1/vpcs/${enc(vpcId)}`);
    const [subnets, tables, igws, nats, groups] = await Promise.all([
      listAll('/v1/subnets', q), listAll('/v1/route-tables', q), listAll('/v1/internet-gateways'),
      listAll('/v1/nat-gateways', q), listAll('/v1/security-groups', q)]);
    document.title = `${vpcId} · Kumo`;
    const igw = igws.filter((g) => g.vpc_id === vpcId);
    const section = (id, title, ...rest) => h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...rest);
    clear(content,
      h('dl', { class: 'details' },
        h('dt', {}, 'CIDR'), h('dd', {}, v.cidr_block), h('dt', {}, 'State'), h('dd', {}, v.state),
        h('dt', {}, 'Default VPC'), h('dd', {}, yes(v.is_default)),
        h('dt', {}, 'Main route table'), h('dd', {}, v.main_route_table_id ? link(`/route-tables/${v.main_route_table_id}`, v.main_route_table_id) : '–'),
        h('dt', {}, 'Internet gateway'), h('dd', {}, v.internet_gateway_id ? link('/gateways', v.internet_gateway_id) : '–')),
      section('vpc-subnets', 'Subnets', listTable('vpc-subnets-t', 'Subnets',
        ['Subnet', 'CIDR', 'Free addresses', 'Auto-assign public IP', 'Public', 'Route table'],
        h('tbody', {}, rowsOr(subnets.map((s) => h('tr', {}, cell('Subnet', s.subnet_id), cell('CIDR', s.cidr_block),
          cell('Free addresses', String(s.available_ip_address_count)), cell('Auto-assign public IP', yes(s.map_public_ip_on_launch)),
          cell('Public', yes(s.public)), cell('Route table', link(`/route-tables/${s.route_table_id}`, s.route_table_id)))),
        6, 'No subnets'))), h('p', {}, link('/subnets', 'Create or change subnets'))),
      section('vpc-rtbs', 'Route tables', listTable('vpc-rtbs-t', 'Route tables', ['Route table', 'Main', 'Routes', 'Subnets'],
        h('tbody', {}, rowsOr(tables.map((t) => h('tr', {},
          cell('Route table', link(`/route-tables/${t.route_table_id}`, t.route_table_id)), cell('Main', yes(t.main)),
          cell('Routes', t.routes.map((r) => `${r.destination_cidr_block} → ${r.target}`).join(', ')),
          cell('Subnets', t.associations.map((a) => a.subnet_id).join(', ') || '–'))), 4, 'No route tables')))),
      section('vpc-gws', 'Gateways', listTable('vpc-gws-t', 'Gateways', ['Gateway', 'Kind', 'State', 'Address'],
        h('tbody', {}, rowsOr([
          ...igw.map((g) => h('tr', {}, cell('Gateway', link('/gateways', g.internet_gateway_id)),
            cell('Kind', 'Internet gateway'), cell('State', g.state), cell('Address', '–'))),
          ...nats.map((n) => h('tr', {}, cell('Gateway', link('/gateways', n.nat_gateway_id)),
            cell('Kind', 'NAT gateway'), cell('State', n.state),
            cell('Address', [n.public_ip, n.private_ip].filter(Boolean).join(' / ') || '–')))], 4, 'No gateways')))),
      section('vpc-sgs', 'Security groups', listTable('vpc-sgs-t', 'Security groups', ['Group', 'Name', 'Description'],
        h('tbody', {}, rowsOr(groups.map((g) => h('tr', {},
          cell('Group', link(`/security-groups/${g.group_id}`, g.group_id)), cell('Name', g.group_name),
          cell('Description', g.description || '–'))), 3, 'No security groups')))));
  }
  await live(pg, root, 5000, draw, err);
}

// ---- Subnets ------------------------------------------------------------------------------
export async function subnetsPage(root, pg) {
  document.title = 'Subnets · Kumo';
  const err = errorBox();
  const formErr = errorBox();
  const body = h('tbody');
  const vpcSelect = h('select', { name: 'vpc_id' });
  const cidr = h('input', { name: 'cidr_block', placeholder: '10.0.1.0/24', autocomplete: 'off', spellcheck: 'false' });
  const auto = h('input', { type: 'checkbox', name: 'map_public_ip_on_launch' });
  const create = h('button', { type: 'submit' }, 'Create subnet');
  const form = h('form', { class: 'card', 'aria-labelledby': 'subnet-new' },
    h('h2', { id: 'subnet-new' }, 'Create a subnet'), field('VPC', vpcSelect),
    field('IPv4 CIDR block', cidr, 'Inside the VPC\'s CIDR, /16 to /28.'),
    field('Auto-assign public IPv4 address', auto), formErr, create);
  clear(root, h('h1', {}, 'Subnets'), err,
    listTable('subnets', 'Subnets', ['Subnet', 'VPC', 'CIDR', 'Free addresses', 'Auto-assign public IP',
      'Public', 'Route table', 'State', ''], body), form);
  async function draw() {
    const [subnets, vpcs] = await Promise.all([listAll('/v1/subnets'), listAll('/v1/vpcs')]);
    fill(vpcSelect, vpcs, (v) => v.vpc_id, vpcLabel, true);
    clear(body, rowsOr(subnets.map((s) => h('tr', { 'data-subnet-id': s.subnet_id },
      cell('Subnet', s.subnet_id), cell('VPC', link(`/vpcs/${s.vpc_id}`, s.vpc_id)), cell('CIDR', s.cidr_block),
      cell('Free addresses', String(s.available_ip_address_count)),
      cell('Auto-assign public IP', yes(s.map_public_ip_on_launch)),
      cell('Public', s.public ? 'yes (routes to an internet gateway)' : 'no'),
      cell('Route table', link(`/route-tables/${s.route_table_id}`, s.route_table_id)), cell('State', s.state),
      actionCell(
        actionButton(s.map_public_ip_on_launch ? 'Turn off auto-assign' : 'Turn on auto-assign',
          `${s.map_public_ip_on_launch ? 'Turn off' : 'Turn on'} auto-assign public IP for ${s.subnet_id}`, err, async () => {
            await api('PATCH', `/v1/subnets/${enc(s.subnet_id)}`, { map_public_ip_on_launch: !s.map_public_ip_on_launch });
            await draw();
          }),
        actionButton('Delete', `Delete ${s.subnet_id}`, err, async () => {
          await api('DELETE', `/v1/subnets/${enc(s.subnet_id)}`);
          await draw();
        }, { danger: true, confirm: true })))), 9, 'No subnets'));
  }
  onSubmit(form, create, formErr, async () => {
    await api('POST', '/v1/subnets', { vpc_id: vpcSelect.value, cidr_block: cidr.value.trim(),
      map_public_ip_on_launch: auto.checked });
    cidr.value = '';
    auto.checked = false;
    await draw();
  });
  await live(pg, body, 5000, draw, err);
}

// ---- Route tables -------------------------------------------------------------------------
export async function routeTablesPage(root, pg) {
  document.title = 'Route tables · Kumo';
  const err = errorBox();
  const formErr = errorBox();
  const body = h('tbody');
  const vpcSelect = h('select', { name: 'vpc_id' });
  const create = h('button', { type: 'submit' }, 'Create route table');
  const form = h('form', { class: 'card', 'aria-labelledby': 'rtb-new' },
    h('h2', { id: 'rtb-new' }, 'Create a route table'), field('VPC', vpcSelect), formErr, create);
  clear(root, h('h1', {}, 'Route tables'), err,
    listTable('route-tables', 'Route tables', ['Route table', 'VPC', 'Main', 'Routes', 'Associated subnets'], body), form);
  async function draw() {
    const [tables, vpcs] = await Promise.all([listAll('/v1/route-tables'), listAll('/v1/vpcs')]);
    fill(vpcSelect, vpcs, (v) => v.vpc_id, vpcLabel, true);
    clear(body, rowsOr(tables.map((t) => h('tr', { 'data-route-table-id': t.route_table_id },
      cell('Route table', link(`/route-tables/${t.route_table_id}`, t.route_table_id)),
      cell('VPC', link(`/vpcs/${t.vpc_id}`, t.vpc_id)), cell('Main', yes(t.main)),
      cell('Routes', String(t.routes.length)),
      cell('Associated subnets', t.associations.map((a) => a.subnet_id).join(', ') || '–'))), 5, 'No route tables'));
  }
  onSubmit(form, create, formErr, async () => {
    const t = await api('POST', '/v1/route-tables', { vpc_id: vpcSelect.value });
    location.hash = `#/route-tables/${enc(t.route_table_id)}`;
  });
  await live(pg, body, 10000, draw, err);
}

export async function routeTablePage(root, pg, rtbId) {
  const path = `/v1/route-tables/${enc(rtbId)}`;
  const err = errorBox();
  const routesErr = errorBox();
  const assocErr = errorBox();
  const routesBody = h('tbody');
  const assocBody = h('tbody');
  const details = h('dl', { class: 'details' });
  const dest = h('input', { name: 'destination_cidr_block', value: '0.0.0.0/0', autocomplete: 'off', spellcheck: 'false' });
  const targetSelect = h('select', { name: 'target' });
  const addRoute = h('button', { type: 'submit' }, 'Add route');
  const routeForm = h('form', { class: 'rule-form', 'aria-label': 'Add a route' },
    field('Destination', dest), field('Target', targetSelect, 'An internet gateway or a NAT gateway.'), addRoute);
  const subnetSelect = h('select', { name: 'subnet_id' });
  const associate = h('button', { type: 'submit' }, 'Associate subnet');
  const assocForm = h('form', { class: 'rule-form', 'aria-label': 'Associate a subnet' }, field('Subnet', subnetSelect), associate);
  const del = actionButton('Delete route table', `Delete route table ${rtbId}`, err, async () => {
    await api('DELETE', path);
    location.hash = '#/route-tables';
  }, { danger: true, confirm: true });
  clear(root, h('p', {}, link('/route-tables', '← Route tables')), h('h1', {}, rtbId), err, details,
    h('section', { 'aria-labelledby': 'routes-h', id: 'routes' }, h('h2', { id: 'routes-h' }, 'Routes'),
      listTable('routes-t', 'Routes', ['Destination', 'Target', 'State', ''], routesBody), routesErr, routeForm),
    h('section', { 'aria-labelledby': 'assoc-h', id: 'associations' }, h('h2', { id: 'assoc-h' }, 'Subnet associations'),
      listTable('assoc-t', 'Subnet associations', ['Association', 'Subnet', ''], assocBody), assocErr, assocForm),
    h('div', { class: 'actions' }, del));
  async function draw() {
    const t = await api('GET', path);
    document.title = `${rtbId} · Kumo`;
    const [igws, nats, subnets] = await Promise.all([listAll('/v1/internet-gateways'),
      listAll('/v1/nat-gateways', { vpc_id: t.vpc_id }), listAll('/v1/subnets', { vpc_id: t.vpc_id })]);
    clear(details, h('dt', {}, 'VPC'), h('dd', {}, link(`/vpcs/${t.vpc_id}`, t.vpc_id)),
      h('dt', {}, 'Main table'), h('dd', {}, t.main ? 'yes (subnets without an explicit association use it)' : 'no'));
    clear(routesBody, rowsOr(t.routes.map((r) => h('tr', { 'data-destination': r.destination_cidr_block },
      cell('Destination', r.destination_cidr_block), cell('Target', target(r.target)), cell('State', r.state),
      actionCell(r.target === 'local' ? '' : actionButton('Remove', `Remove route ${r.destination_cidr_block}`, routesErr, async () => {
        await api('DELETE', `${path}/routes?${new URLSearchParams({ destination_cidr_block: r.destination_cidr_block })}`);
        await draw();
      })))), 4, 'No routes'));
    // Gateways attached to this VPC first; the API refuses the others, and says why.
    const gws = [...igws].sort((a, b) => (b.vpc_id === t.vpc_id) - (a.vpc_id === t.vpc_id));
    fill(targetSelect, [...gws, ...nats.filter((n) => n.state !== 'deleted' && n.state !== 'deleting')],
      (g) => g.internet_gateway_id || g.nat_gateway_id,
      (g) => (g.internet_gateway_id
        ? `${g.internet_gateway_id} (internet gateway, ${g.vpc_id ? `attached to ${g.vpc_id}` : 'detached'})`
        : `${g.nat_gateway_id} (NAT gateway, ${g.state})`), true);
    const bySubnet = Object.fromEntries(subnets.map((s) => [s.subnet_id, s]));
    clear(assocBody, rowsOr(t.associations.map((a) => h('tr', { 'data-subnet-id': a.subnet_id },
      cell('Association', a.association_id),
      cell('Subnet', a.subnet_id, bySubnet[a.subnet_id] ? ` (${bySubnet[a.subnet_id].cidr_block})` : ''),
      actionCell(actionButton('Disassociate', `Disassociate ${a.subnet_id}`, assocErr, async () => {
        await api('DELETE', `/v1/route-table-associations/${enc(a.association_id)}`);
        await draw();
      })))), 3, t.main ? 'No explicit associations' : 'No subnets'));
    fill(subnetSelect, subnets, (s) => s.subnet_id, (s) => `${s.subnet_id} (${s.cidr_block}, now ${s.route_table_id})`, true);
  }
  onSubmit(routeForm, addRoute, routesErr, async () => {
    const body = { destination_cidr_block: dest.value.trim() };
    const tgt = targetSelect.value;
    if (tgt.startsWith('nat-')) body.nat_gateway_id = tgt;
    else if (tgt) body.gateway_id = tgt;
    await api('POST', `${path}/routes`, body);
    await draw();
  });
  onSubmit(assocForm, associate, assocErr, async () => {
    await api('POST', `${path}/associations`, { subnet_id: subnetSelect.value });
    await draw();
  });
  await live(pg, root, 10000, draw, err);
}

// ---- Gateways -----------------------------------------------------------------------------
export async function gatewaysPage(root, pg) {
  document.title = 'Gateways · Kumo';
  const igwErr = errorBox();
  const natErr = errorBox();
  const igwBody = h('tbody');
  const natBody = h('tbody');
  const createIgw = actionButton('Create internet gateway', 'Create internet gateway', igwErr, async () => {
    await api('POST', '/v1/internet-gateways');
    await draw();
  });
  const igwSelect = h('select', { name: 'internet_gateway_id' });
  const vpcSelect = h('select', { name: 'vpc_id' });
  const attach = h('button', { type: 'submit' }, 'Attach to VPC');
  const attachForm = h('form', { class: 'rule-form', 'aria-label': 'Attach an internet gateway' },
    field('Internet gateway', igwSelect), field('VPC', vpcSelect), attach);
  const subnetSelect = h('select', { name: 'subnet_id' });
  const eipSelect = h('select', { name: 'allocation_id' });
  const createNat = h('button', { type: 'submit' }, 'Create NAT gateway');
  const natForm = h('form', { class: 'rule-form', 'aria-label': 'Create a NAT gateway' },
    field('Subnet', subnetSelect, 'A public subnet.'), field('Elastic IP', eipSelect, 'An unassociated elastic IP.'), createNat);
  clear(root, h('h1', {}, 'Gateways'),
    h('section', { 'aria-labelledby': 'igw-h', id: 'internet-gateways' }, h('h2', { id: 'igw-h' }, 'Internet gateways'),
      listTable('igws', 'Internet gateways', ['Internet gateway', 'State', 'VPC', ''], igwBody), igwErr,
      h('div', { class: 'actions' }, createIgw), attachForm),
    h('section', { 'aria-labelledby': 'nat-h', id: 'nat-gateways' }, h('h2', { id: 'nat-h' }, 'NAT gateways'),
      listTable('nats', 'NAT gateways', ['NAT gateway', 'State', 'VPC', 'Subnet', 'Elastic IP', 'Private IP', ''], natBody),
      natErr, natForm));
  async function draw() {
    const [igws, nats, vpcs, subnets, eips] = await Promise.all([listAll('/v1/internet-gateways'),
      listAll('/v1/nat-gateways'), listAll('/v1/vpcs'), listAll('/v1/subnets'), listAll('/v1/elastic-ips')]);
    clear(igwBody, rowsOr(igws.map((g) => h('tr', { 'data-igw-id': g.internet_gateway_id },
      cell('Internet gateway', g.internet_gateway_id), cell('State', g.state),
      cell('VPC', g.vpc_id ? link(`/vpcs/${g.vpc_id}`, g.vpc_id) : '–'),
      actionCell(
        g.vpc_id ? actionButton('Detach', `Detach ${g.internet_gateway_id}`, igwErr, async () => {
          await api('POST', `/v1/internet-gateways/${enc(g.internet_gateway_id)}/detach`, { vpc_id: g.vpc_id });
          await draw();
        }) : '',
        actionButton('Delete', `Delete ${g.internet_gateway_id}`, igwErr, async () => {
          await api('DELETE', `/v1/internet-gateways/${enc(g.internet_gateway_id)}`);
          await draw();
        }, { danger: true, confirm: true })))), 4, 'No internet gateways'));
    // Detached gateways first: those are the ones that can be attached.
    fill(igwSelect, [...igws].sort((a, b) => (a.vpc_id ? 1 : 0) - (b.vpc_id ? 1 : 0)), (g) => g.internet_gateway_id,
      (g) => `${g.internet_gateway_id} (${g.vpc_id ? `attached to ${g.vpc_id}` : 'detached'})`, true);
    fill(vpcSelect, vpcs, (v) => v.vpc_id, (v) => `${vpcLabel(v)}${v.internet_gateway_id ? `, has ${v.internet_gateway_id}` : ''}`, true);
    clear(natBody, rowsOr(nats.map((n) => h('tr', { 'data-nat-id': n.nat_gateway_id },
      cell('NAT gateway', n.nat_gateway_id),
      cell('State', h('span', { class: `badge state-${n.state}` }, n.state), n.state_message ? ` ${n.state_message}` : ''),
      cell('VPC', link(`/vpcs/${n.vpc_id}`, n.vpc_id)), cell('Subnet', n.subnet_id),
      cell('Elastic IP', n.public_ip ? `${n.public_ip} (${n.allocation_id})` : '–'), cell('Private IP', n.private_ip || '–'),
      actionCell(n.state === 'deleted' || n.state === 'deleting' ? '' :
        actionButton('Delete', `Delete ${n.nat_gateway_id}`, natErr, async () => {
          await api('DELETE', `/v1/nat-gateways/${enc(n.nat_gateway_id)}`);
          await draw();
        }, { danger: true, confirm: true })))), 7, 'No NAT gateways'));
    fill(subnetSelect, [...subnets].sort((a, b) => b.public - a.public), (s) => s.subnet_id, subnetLabel, true);
    fill(eipSelect, eips.filter((e) => !e.association_id && !e.nat_gateway_id), (e) => e.allocation_id,
      (e) => `${e.public_ip} (${e.allocation_id})`, true);
  }
  onSubmit(attachForm, attach, igwErr, async () => {
    await api('POST', `/v1/internet-gateways/${enc(igwSelect.value)}/attach`, { vpc_id: vpcSelect.value });
    await draw();
  });
  onSubmit(natForm, createNat, natErr, async () => {
    await api('POST', '/v1/nat-gateways', { subnet_id: subnetSelect.value, allocation_id: eipSelect.value });
    await draw();
  });
  // NAT gateways go pending -> available (and deleting -> deleted) without the user: follow them.
  await live(pg, root, 3000, draw, natErr);
}

// ---- Elastic IPs --------------------------------------------------------------------------
const LIVE = (i) => !['shutting-down', 'terminated'].includes(i.state);

export async function elasticIpsPage(root, pg) {
  document.title = 'Elastic IPs · Kumo';
  const err = errorBox();
  const formErr = errorBox();
  const body = h('tbody');
  const allocate = actionButton('Allocate elastic IP', 'Allocate elastic IP', err, async () => {
    await api('POST', '/v1/elastic-ips');
    await draw();
  });
  const eipSelect = h('select', { name: 'allocation_id' });
  const instSelect = h('select', { name: 'instance_id' });
  const reassoc = h('input', { type: 'checkbox', name: 'allow_reassociation' });
  const associate = h('button', { type: 'submit' }, 'Associate');
  const form = h('form', { class: 'card', 'aria-labelledby': 'eip-assoc' },
    h('h2', { id: 'eip-assoc' }, 'Associate an elastic IP with an instance'),
    field('Elastic IP', eipSelect), field('Instance', instSelect),
    field('Allow reassociation', reassoc, 'Move the address even if it, or the instance, is already associated.'),
    formErr, associate);
  clear(root, h('h1', {}, 'Elastic IPs'), err, h('div', { class: 'actions' }, allocate),
    listTable('elastic-ips', 'Elastic IPs', ['Public IP', 'Allocation', 'Associated with', 'Private IP', ''], body), form);
  async function draw() {
    const [eips, instances] = await Promise.all([listAll('/v1/elastic-ips'), listAll('/v1/instances')]);
    clear(body, rowsOr(eips.map((e) => h('tr', { 'data-allocation-id': e.allocation_id },
      cell('Public IP', e.public_ip), cell('Allocation', e.allocation_id),
      cell('Associated with', e.instance_id ? link(`/instances/${e.instance_id}`, e.instance_id)
        : e.nat_gateway_id ? link('/gateways', e.nat_gateway_id) : '–'),
      cell('Private IP', e.private_ip || '–'),
      actionCell(
        e.instance_id ? actionButton('Disassociate', `Disassociate ${e.public_ip}`, err, async () => {
          await api('POST', `/v1/elastic-ips/${enc(e.allocation_id)}/disassociate`);
          await draw();
        }) : '',
        actionButton('Release', `Release ${e.public_ip}`, err, async () => {
          await api('DELETE', `/v1/elastic-ips/${enc(e.allocation_id)}`);
          await draw();
        }, { danger: true, confirm: true })))), 5, 'No elastic IPs'));
    fill(eipSelect, eips, (e) => e.allocation_id,
      (e) => `${e.public_ip} (${e.instance_id ? `on ${e.instance_id}` : e.nat_gateway_id ? `on ${e.nat_gateway_id}` : 'free'})`, true);
    fill(instSelect, instances.filter(LIVE), (i) => i.instance_id,
      (i) => `${i.instance_id}${nameOf(i) ? ` ${nameOf(i)}` : ''} (${i.state}, ${i.private_ip || 'no address yet'})`, true);
  }
  onSubmit(form, associate, formErr, async () => {
    await api('POST', `/v1/elastic-ips/${enc(eipSelect.value)}/associate`,
      { instance_id: instSelect.value, allow_reassociation: reassoc.checked });
    await draw();
  });
  await live(pg, body, 5000, draw, err);
}
