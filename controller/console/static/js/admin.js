// The administrator's pages (issue 15): hosts (capacity, health, agent version; disable/enable;
// a join token for a new host, shown once), accounts (create one, its API key shown once; each
// account's console users: list, add, remove) and instance types (list, create, retire).
// Every change is one /v1 call; the API decides who may (admins only): a non-admin who opens
// these routes sees the API's refusal verbatim, in the page's alert, not a broken page.
import { api, listAll } from './api.js';
import { clear, errorBox, field, h, money } from './dom.js';

const GIB = 1024 ** 3;

function table(caption, columns, body, id) {
  return h('div', { class: 'scroll' }, h('table', { class: 'list', id },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))), body));
}

function td(label, ...children) {
  return h('td', { 'data-label': label }, ...children);
}

// A secret the API shows only once: the text to copy and a reminder, in a status region.
function shownOnce(box, title, secret, note) {
  clear(box, h('strong', {}, title), ' ', h('code', { class: 'secret' }, secret), h('br'), note);
  box.hidden = false;
}

// Draws the page's frame, then loads its first data: a refusal (a non-admin's 403) is shown in
// the page's alert with nothing else drawn, and the caller stops there.
async function firstLoad(err, fn) {
  try { await fn(); return true; } catch (e) { err.show(e); return false; }
}

export async function hostsPage(root, pg) {
  document.title = 'Hosts · Kumo';
  const err = errorBox();
  const body = h('tbody');
  const list = table('Hosts', ['Host', 'State', 'Enabled', 'Health', 'vCPUs used', 'Memory used (MiB)',
    'Disk used (GiB)', 'Agent version', 'Action'], body, 'admin-hosts');
  clear(root, h('h1', {}, 'Hosts'), err);
  const draw = (hosts) => clear(body, hosts.map((x) => {
    const verb = x.enabled ? 'Disable' : 'Enable';
    const btn = h('button', { type: 'button', class: x.enabled ? 'danger' : '', 'aria-label': `${verb} ${x.host_id}` }, verb);
    btn.addEventListener('click', async () => {
      err.hide();
      btn.disabled = true;
      try {
        const updated = await api('POST', `/v1/hosts/${encodeURIComponent(x.host_id)}/${verb.toLowerCase()}`);
        Object.assign(x, updated);
        draw(hosts);
      } catch (e) { err.show(e); btn.disabled = false; }
    });
    return h('tr', { 'data-host-id': x.host_id },
      td('Host', x.host_id),
      td('State', x.state),
      td('Enabled', x.enabled ? 'yes' : 'no (disabled)'),
      td('Health', x.health, x.health_reasons && x.health_reasons.length ? ` (${x.health_reasons.join('; ')})` : ''),
      td('vCPUs used', `${x.vcpus_used} / ${x.vcpus}`),
      td('Memory used (MiB)', `${x.memory_mib_used} / ${x.memory_mib}`),
      td('Disk used (GiB)', `${(x.disk_bytes_used / GIB).toFixed(1)} / ${(x.disk_bytes / GIB).toFixed(1)}`),
      td('Agent version', (x.versions && x.versions.agent) || '–'),
      h('td', { 'data-label': 'Action', class: 'cell-action' }, btn));
  }));
  if (!await firstLoad(err, async () => draw(await listAll('/v1/hosts')))) return;

  const hostId = h('input', { name: 'host_id', required: true, maxlength: 63, autocapitalize: 'none' });
  const ttl = h('input', { name: 'ttl_s', type: 'number', min: 60, max: 604800, value: '3600', inputmode: 'numeric' });
  const made = h('p', { role: 'status', id: 'join-token', hidden: true });
  const tokErr = errorBox();
  const create = h('button', { type: 'submit' }, 'Create join token');
  const form = h('form', { class: 'card', 'aria-labelledby': 'join-title', novalidate: true },
    h('h2', { id: 'join-title' }, 'Add a host: create a join token'),
    field('New host id', hostId, 'Lower-case letters, digits and dashes.'),
    field('Valid for (seconds)', ttl), tokErr, create, made);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    tokErr.hide();
    create.disabled = true;
    try {
      const t = await api('POST', '/v1/hosts/join-tokens', { host_id: hostId.value, ttl_s: Number(ttl.value) });
      shownOnce(made, `Join token for ${t.host_id}:`, t.token,
        `Shown only once: give it to the host's agent (KUMO_AGENT_JOIN_TOKEN) with the CA's sha256 ${t.ca_sha256} (KUMO_AGENT_CA_SHA256). Expires ${t.expires_at}.`);
    } catch (e) { tokErr.show(e); } finally { create.disabled = false; }
  });
  root.append(list, form);
  // Live: capacity and health follow the heartbeats (a refused refresh shows in the alert).
  await pg.every(5000, async () => {
    try { draw(await listAll('/v1/hosts')); } catch (e) { err.show(e); }
  });
}

// One account's console users: the list with Remove buttons and the form that adds one.
async function usersPanel(panel, acct) {
  const err = errorBox();
  const body = h('tbody');
  const base = `/v1/accounts/${encodeURIComponent(acct.account_id)}/users`;
  const reload = async () => {
    const users = await listAll(base);
    clear(body, users.map((u) => {
      const rm = h('button', { type: 'button', class: 'danger', 'aria-label': `Remove user ${u.username}` }, 'Remove');
      rm.addEventListener('click', async () => {
        err.hide();
        rm.disabled = true;
        try { await api('DELETE', `${base}/${encodeURIComponent(u.username)}`); await reload(); } catch (e) { err.show(e); rm.disabled = false; }
      });
      return h('tr', { 'data-username': u.username }, td('Username', u.username), td('Created', u.created_at),
        h('td', { 'data-label': 'Action', class: 'cell-action' }, rm));
    }));
    if (!users.length) body.append(h('tr', {}, h('td', { colspan: 3 }, 'No console users.')));
  };
  const user = h('input', { name: 'username', required: true, maxlength: 63, autocapitalize: 'none', autocomplete: 'off' });
  const pass = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' });
  const add = h('button', { type: 'submit' }, 'Add user');
  const form = h('form', { class: 'inline', 'aria-label': `Add a console user to ${acct.name}`, novalidate: true },
    field('Username', user), field('Password', pass), add);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    add.disabled = true;
    try {
      await api('POST', base, { username: user.value, password: pass.value });
      user.value = pass.value = '';
      await reload();
    } catch (e) { err.show(e); } finally { add.disabled = false; pass.value = ''; }
  });
  clear(panel, h('h2', { id: 'users-title' }, `Console users of ${acct.name}`), err,
    table(`Console users of ${acct.name}`, ['Username', 'Created', 'Action'], body, 'account-users'), form);
  panel.hidden = false;
  try { await reload(); } catch (e) { err.show(e); }
}

export async function accountsPage(root) {
  document.title = 'Accounts · Kumo';
  const err = errorBox();
  const body = h('tbody');
  const panel = h('section', { class: 'card', 'aria-labelledby': 'users-title', hidden: true });
  clear(root, h('h1', {}, 'Accounts'), err);
  const draw = (accounts) => clear(body, accounts.map((a) => {
    const users = h('button', { type: 'button', 'aria-label': `Console users of ${a.name}` }, 'Console users');
    users.addEventListener('click', () => usersPanel(panel, a).then(() => panel.querySelector('input').focus()));
    return h('tr', { 'data-account-id': a.account_id }, td('Name', a.name), td('Account', a.account_id),
      td('Admin', a.is_admin ? 'yes' : 'no'), h('td', { 'data-label': 'Users', class: 'cell-action' }, users));
  }));
  const reload = async () => draw(await listAll('/v1/accounts'));
  if (!await firstLoad(err, reload)) return;

  const name = h('input', { name: 'account_name', required: true, maxlength: 63, autocapitalize: 'none' });
  const made = h('p', { role: 'status', id: 'api-key', hidden: true });
  const newErr = errorBox();
  const create = h('button', { type: 'submit' }, 'Create account');
  const form = h('form', { class: 'card', 'aria-labelledby': 'acct-new', novalidate: true },
    h('h2', { id: 'acct-new' }, 'Create an account'), field('Account name', name), newErr, create, made);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    newErr.hide();
    create.disabled = true;
    try {
      const a = await api('POST', '/v1/accounts', { name: name.value });
      shownOnce(made, `API key of ${a.name} (${a.account_id}):`, a.api_key,
        'Shown only once: only its hash is kept. Copy it now.');
      name.value = '';
      await reload();
    } catch (e) { newErr.show(e); } finally { create.disabled = false; }
  });
  root.append(table('Accounts', ['Name', 'Account', 'Admin', 'Users'], body, 'admin-accounts'), form, panel);
}

export async function instanceTypesPage(root) {
  document.title = 'Instance types · Kumo';
  const err = errorBox();
  const body = h('tbody');
  clear(root, h('h1', {}, 'Instance types'), err);
  const draw = (types) => clear(body, types.map((t) => {
    // DELETE retires the type: instances that have it keep it, new launches are refused.
    const del = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${t.name}` }, 'Delete');
    del.addEventListener('click', async () => {
      err.hide();
      del.disabled = true;
      try { await api('DELETE', `/v1/instance-types/${encodeURIComponent(t.name)}`); await reload(); } catch (e) { err.show(e); del.disabled = false; }
    });
    return h('tr', { 'data-type': t.name }, td('Name', t.name), td('vCPUs', String(t.vcpus)),
      td('Memory (MiB)', String(t.memory_mib)), td('Hourly price', money(t.hourly_price)),
      h('td', { 'data-label': 'Action', class: 'cell-action' }, del));
  }));
  const reload = async () => draw(await listAll('/v1/instance-types'));
  if (!await firstLoad(err, reload)) return;

  const name = h('input', { name: 'type_name', required: true, maxlength: 40, autocapitalize: 'none' });
  const vcpus = h('input', { name: 'vcpus', type: 'number', min: 1, max: 64, value: '1', inputmode: 'numeric' });
  const mem = h('input', { name: 'memory_mib', type: 'number', min: 64, max: 1048576, value: '512', inputmode: 'numeric' });
  const price = h('input', { name: 'hourly_price', inputmode: 'decimal', value: '0' });
  const newErr = errorBox();
  const create = h('button', { type: 'submit' }, 'Create instance type');
  const form = h('form', { class: 'card', 'aria-labelledby': 'type-new', novalidate: true },
    h('h2', { id: 'type-new' }, 'Create an instance type'),
    field('Type name', name), field('vCPUs', vcpus), field('Memory (MiB)', mem),
    field('Hourly price (USD)', price), newErr, create);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    newErr.hide();
    create.disabled = true;
    try {
      // Numbers as typed: anything that is not one goes to the API as text, which refuses it.
      const num = (s) => (s.trim() !== '' && !Number.isNaN(Number(s)) ? Number(s) : s);
      await api('POST', '/v1/instance-types',
        { name: name.value, vcpus: num(vcpus.value), memory_mib: num(mem.value), hourly_price: num(price.value) });
      name.value = '';
      await reload();
    } catch (e) { newErr.show(e); } finally { create.disabled = false; }
  });
  root.append(table('Instance types', ['Name', 'vCPUs', 'Memory (MiB)', 'Hourly price', 'Action'], body, 'admin-types'), form);
}
