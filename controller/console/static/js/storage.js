// Storage and images: volumes (list with a create form; one volume's page: attach to an
// instance, detach, grow, snapshot, edit tags, delete), snapshots (list: create a volume from
// one, edit its tags, delete)
// and images (list filtered all / public / owned by me; one image's page: details, launch
// permission of one's own images, deregister, a link to the launch wizard). Every change is one
// /v1 call; what the API refuses is shown as it said it, and the page keeps what it had.
import { api, currentSession, listAll } from './api.js';
import { clear, errorBox, field, h, link, nameOf } from './dom.js';

const GIB = 1024 ** 3;
// EC2's suggested device names for data volumes (the API takes /dev/sd[b-z]; f.. as EC2 offers).
export const DEVICES = 'fghijklmnopqrstuvwxyz'.split('').map((c) => `/dev/sd${c}`);

const when = (t) => (t ? String(t).replace('T', ' ').replace(/\.\d+/, '').replace(/(\+00:00|Z)$/, ' UTC') : '–');
// Bytes as people read them (an image of 64 MiB is not "1 GiB").
const bytes = (n) => (n >= GIB ? `${+(n / GIB).toFixed(1)} GiB`
  : n >= 1024 ** 2 ? `${Math.ceil(n / 1024 ** 2)} MiB` : `${Math.ceil(n / 1024)} KiB`);
const badge = (state) => h('span', { class: `badge state-${state}` }, state);
const cell = (label, ...content) => h('td', { 'data-label': label }, ...content);
const head = (cols) => h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c))));

// A button that does one API call; `confirm` asks for a second click first (as instances.js).
function button(label, err, run, opts = {}) {
  const b = h('button', { type: 'button', class: opts.danger ? 'danger' : '', 'aria-label': opts.aria || null }, label);
  b.addEventListener('click', async () => {
    err.hide();
    if (opts.confirm && !b.dataset.armed) {
      b.dataset.armed = '1';
      b.textContent = `Confirm: ${label.toLowerCase()}`;
      if (opts.aria) b.setAttribute('aria-label', `Confirm: ${opts.aria.toLowerCase()}`);
      return;
    }
    delete b.dataset.armed;
    b.textContent = label;
    if (opts.aria) b.setAttribute('aria-label', opts.aria);
    b.disabled = true;
    try { await run(); } catch (e) { err.show(e); } finally { b.disabled = false; }
  });
  return b;
}

// Redraw a live list only when its data changed: a redraw would drop a half-confirmed button.
function changed(holder, items) {
  const sig = JSON.stringify(items);
  if (holder.sig === sig) return false;
  holder.sig = sig;
  return true;
}

// A tag editor: the Name tag, one key/value row per other tag and an empty row for a new one.
// Saving sends the whole set in one PUT .../tags (the API replaces all tags); an empty Name or an
// empty key drops that tag. Keys and values go as typed: the API says what it refuses.
let tagUid = 0;
function tagEditor(tags, err, save, { aria = 'Save tags' } = {}) {
  const n = ++tagUid;
  const name = h('input', { name: 'tag_name', maxlength: '256', autocomplete: 'off', value: tags.Name || '' });
  const rows = [...Object.entries(tags).filter(([k]) => k !== 'Name'), ['', '']].map(([k, val], i) => {
    const key = h('input', { name: `tag_key_${i}`, maxlength: '128', autocomplete: 'off', value: k });
    const value = h('input', { name: `tag_value_${i}`, maxlength: '256', autocomplete: 'off', value: val });
    return { key, value, el: h('div', { class: 'inline tag-row' },
      field(k ? `Tag ${i + 1} key` : 'New tag key', key, k ? 'Empty: remove this tag' : null),
      field(k ? `Tag ${i + 1} value` : 'New tag value', value)) };
  });
  const submit = button('Save tags', err, async () => {
    const out = {};
    if (name.value !== '') out.Name = name.value;
    for (const r of rows) if (r.key.value !== '') out[r.key.value] = r.value.value;
    await save(out);
  }, { aria });
  const form = h('form', { class: 'tag-editor', 'data-editor': String(n) },
    field('Name', name), rows.map((r) => r.el), h('div', { class: 'actions' }, submit));
  // A submit button, so Enter in any field saves (the browser clicks it); the page never reloads.
  submit.type = 'submit';
  form.addEventListener('submit', (ev) => ev.preventDefault());
  // Edited and not saved: a live refresh must not redraw it under the user's hands.
  form.addEventListener('input', () => { form.dataset.dirty = '1'; });
  return form;
}

function attachedTo(v) {
  const a = (v.attachments || [])[0];
  if (!a) return '–';
  return [link(`/instances/${a.instance_id}`, a.instance_id), ` ${a.device}${a.state === 'attached' ? '' : ` (${a.state})`}`];
}

// -- volumes ---------------------------------------------------------------------------------
export async function volumesPage(root, pg) {
  document.title = 'Volumes · Kumo';
  const err = errorBox();
  const listErr = errorBox();
  const body = h('tbody');
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const size = h('input', { type: 'number', name: 'size_gib', min: '1', inputmode: 'numeric', value: '1' });
  const name = h('input', { name: 'name', maxlength: '256' });
  const snap = h('select', { name: 'snapshot_id' }, h('option', { value: '' }, 'None (an empty volume)'));
  const create = h('button', { type: 'submit' }, 'Create volume');
  const form = h('form', { class: 'card', 'aria-labelledby': 'vol-new' },
    h('h2', { id: 'vol-new' }, 'Create a volume'),
    field('Size (GiB)', size, 'With a snapshot: empty means the snapshot\'s size.'), field('Name', name),
    field('From snapshot', snap), err, create);
  clear(root, h('h1', {}, 'Volumes'), listErr, count,
    h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'volumes' },
      h('caption', { class: 'sr-only' }, 'Volumes'),
      head(['Volume', 'Name', 'Size (GiB)', 'State', 'Attached to', 'Created']), body)),
    form);
  const snaps = await listAll('/v1/snapshots', { status: 'completed' }).catch(() => []);
  snap.append(...snaps.map((s) => h('option', { value: s.snapshot_id },
    `${s.snapshot_id} (${s.volume_size_gib} GiB${s.description ? `, ${s.description}` : ''})`)));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    const req = { tags: name.value ? { Name: name.value } : {} };
    // Sent as typed: the API says what is wrong with a size.
    if (size.value.trim() !== '') req.size_gib = /^\d+$/.test(size.value.trim()) ? Number(size.value) : size.value;
    if (snap.value) req.snapshot_id = snap.value;
    create.disabled = true;
    try {
      const v = await api('POST', '/v1/volumes', req);
      location.hash = `#/volumes/${encodeURIComponent(v.volume_id)}`;
    } catch (e) {
      err.show(e);
    } finally {
      create.disabled = false;
    }
  });
  const shown = {};
  await pg.every(3000, async () => {
    try {
      const items = await listAll('/v1/volumes');
      listErr.hide();
      if (!pg.alive || !changed(shown, items)) return;
      clear(count, `${items.length} volume${items.length === 1 ? '' : 's'}`);
      clear(body, items.length ? items.map((v) => h('tr', { 'data-volume-id': v.volume_id },
        cell('Volume', link(`/volumes/${v.volume_id}`, v.volume_id)),
        cell('Name', nameOf(v) || '–'),
        cell('Size (GiB)', String(v.size_gib)),
        cell('State', badge(v.state)),
        cell('Attached to', attachedTo(v)),
        cell('Created', when(v.create_time)))) : h('tr', {}, h('td', { colspan: '6', class: 'cell-action' }, 'No volumes')));
    } catch (e) { listErr.show(e); }
  });
}

function volumeDetails(v) {
  const a = (v.attachments || [])[0];
  const rows = [
    ['Volume ID', v.volume_id], ['Name', nameOf(v)], ['Size', `${v.size_gib} GiB`], ['State', v.state],
    ['Modification', v.modification_state || ''], ['Availability zone', v.availability_zone],
    ['From snapshot', v.snapshot_id || ''], ['Created', when(v.create_time)],
    ['Attached to', a ? [link(`/instances/${a.instance_id}`, a.instance_id), ` as ${a.device} (${a.state})`] : ''],
  ];
  for (const [k, val] of Object.entries(v.tags || {})) if (k !== 'Name') rows.push([`Tag ${k}`, val]);
  return h('dl', { class: 'details', id: 'details' },
    rows.map(([k, val]) => [h('dt', {}, k), h('dd', { 'data-field': k }, val || '–')]));
}

export async function volumePage(root, pg, id) {
  const enc = encodeURIComponent(id);
  let v = await api('GET', `/v1/volumes/${enc}`);
  document.title = `${v.volume_id} · Kumo`;
  const title = h('h1', {});
  const err = errorBox();
  const notice = h('p', { class: 'notice', role: 'status' });
  const detailBox = h('div');
  const done = (...msg) => { clear(notice, ...msg); return refresh(); };

  // Attach: to one of the account's instances the API attaches to (running or stopped).
  const instSel = h('select', { name: 'instance_id' });
  const devSel = h('select', { name: 'device' }, DEVICES.map((d) => h('option', { value: d }, d)));
  const attach = button('Attach', err, async () => {
    await api('POST', `/v1/volumes/${enc}/attach`, { instance_id: instSel.value, device: devSel.value });
    await done(`Attaching to ${instSel.value} as ${devSel.value}.`);
  });
  const attachRow = h('div', { class: 'inline' }, field('Instance', instSel), field('Device', devSel), attach);
  const noInstance = h('p', { hidden: true }, 'No running or stopped instance to attach it to.');
  const attachBox = h('section', { 'aria-labelledby': 'att-h', id: 'attach' }, h('h2', { id: 'att-h' }, 'Attach to an instance'),
    attachRow, noInstance);
  const detach = button('Detach', err, async () => {
    await api('POST', `/v1/volumes/${enc}/detach`, {});
    await done('Detaching.');
  });
  const force = button('Force detach', err, async () => {
    await api('POST', `/v1/volumes/${enc}/detach`, { force: true });
    await done('Detaching (forced).');
  }, { danger: true, confirm: true });
  const detachBox = h('section', { 'aria-labelledby': 'det-h', id: 'detach' }, h('h2', { id: 'det-h' }, 'Attachment'),
    h('div', { class: 'actions' }, detach, force));

  const newSize = h('input', { type: 'number', name: 'new_size_gib', min: '1', inputmode: 'numeric', value: String(v.size_gib) });
  const grow = button('Change size', err, async () => {
    const s = newSize.value.trim();
    await api('PATCH', `/v1/volumes/${enc}`, { size_gib: /^\d+$/.test(s) ? Number(s) : s });
    await done(`Size: ${s} GiB requested.`);
  });
  const snapDesc = h('input', { name: 'snapshot_description', maxlength: '255' });
  const snapshot = button('Create snapshot', err, async () => {
    const s = await api('POST', '/v1/snapshots', { volume_id: v.volume_id, description: snapDesc.value });
    snapDesc.value = '';
    await done('Snapshot ', link('/snapshots', s.snapshot_id), ' requested.');
  });
  const del = button('Delete volume', err, async () => {
    await api('DELETE', `/v1/volumes/${enc}`);
    location.hash = '#/volumes';
  }, { danger: true, confirm: true });

  // Tags: redrawn from the volume when they change elsewhere, unless being edited here.
  const tagErr = errorBox();
  const tagBox = h('div');
  let tagsShown = null;
  const drawTags = (force) => {
    const sig = JSON.stringify(v.tags || {});
    const open = tagBox.firstChild;
    if (!force && (sig === tagsShown || (open && open.dataset.dirty))) return;
    tagsShown = sig;
    clear(tagBox, tagEditor(v.tags || {}, tagErr, async (tags) => {
      v = await api('PUT', `/v1/volumes/${enc}/tags`, { tags });
      drawTags(true);
      await done('Tags saved.');
    }));
  };

  clear(root, h('p', {}, link('/volumes', '← Volumes')), title, err, notice,
    h('section', { 'aria-labelledby': 'd-h' }, h('h2', { id: 'd-h' }, 'Details'), detailBox),
    attachBox, detachBox,
    h('section', { 'aria-labelledby': 'sz-h' }, h('h2', { id: 'sz-h' }, 'Size'),
      h('div', { class: 'inline' }, field('New size (GiB)', newSize, 'Volumes only grow.'), grow)),
    h('section', { 'aria-labelledby': 's-h' }, h('h2', { id: 's-h' }, 'Snapshot'),
      h('div', { class: 'inline' }, field('Snapshot description', snapDesc), snapshot)),
    h('section', { 'aria-labelledby': 't-h', id: 'tags' }, h('h2', { id: 't-h' }, 'Tags'), tagErr, tagBox),
    h('div', { class: 'actions' }, del));

  async function loadInstances() {
    const all = await listAll('/v1/instances').catch(() => []);
    const ok = all.filter((i) => i.state === 'running' || i.state === 'stopped');
    const keep = instSel.value;
    attachRow.hidden = !ok.length;
    noInstance.hidden = !!ok.length;
    clear(instSel, ok.length ? ok.map((i) => h('option', { value: i.instance_id, selected: i.instance_id === keep },
      `${i.instance_id}${nameOf(i) ? ` (${nameOf(i)})` : ''} · ${i.state}`)) : h('option', { value: '' }, 'No running or stopped instance'));
  }
  let wasAttached = null;
  async function refresh() {
    v = await api('GET', `/v1/volumes/${enc}`);
    clear(title, nameOf(v) ? `${nameOf(v)} (${v.volume_id})` : v.volume_id);
    clear(detailBox, volumeDetails(v));
    drawTags(false);
    const attached = (v.attachments || []).length > 0;
    attachBox.hidden = attached;
    detachBox.hidden = !attached;
    if (!attached && wasAttached !== false) await loadInstances();
    wasAttached = attached;
  }
  await pg.every(3000, async () => {
    try { await refresh(); } catch (e) { if (e.status === 404) { err.show(e); pg.close(); } }
  });
}

// -- snapshots -------------------------------------------------------------------------------
export async function snapshotsPage(root, pg) {
  document.title = 'Snapshots · Kumo';
  const err = errorBox();
  const notice = h('p', { class: 'notice', role: 'status' });
  const body = h('tbody');
  clear(root, h('h1', {}, 'Snapshots'),
    h('p', { class: 'hint' }, 'Snapshots are taken from a volume\'s page.'), err, notice,
    h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'snapshots' },
      h('caption', { class: 'sr-only' }, 'Snapshots'),
      head(['Snapshot', 'Name', 'Volume', 'Size (GiB)', 'Stored', 'State', 'Progress', 'Description', 'Started', '']), body)));
  const shown = {};
  const row = (s) => {
    const mk = button('Create volume', err, async () => {
      const v = await api('POST', '/v1/volumes', { snapshot_id: s.snapshot_id });
      location.hash = `#/volumes/${encodeURIComponent(v.volume_id)}`;
    }, { aria: `Create volume from ${s.snapshot_id}` });
    mk.disabled = s.state !== 'completed';
    const del = button('Delete', err, async () => {
      await api('DELETE', `/v1/snapshots/${encodeURIComponent(s.snapshot_id)}`);
      clear(notice, `Deleting ${s.snapshot_id}.`);
      await load();
    }, { danger: true, confirm: true, aria: `Delete ${s.snapshot_id}` });
    // Its tags behind a disclosure; one PUT /v1/snapshots/{id}/tags saves them.
    const tags = h('details', { class: 'tags' }, h('summary', { 'aria-label': `Edit tags of ${s.snapshot_id}` }, 'Edit tags'),
      tagEditor(s.tags || {}, err, async (t) => {
        await api('PUT', `/v1/snapshots/${encodeURIComponent(s.snapshot_id)}/tags`, { tags: t });
        clear(notice, `Tags of ${s.snapshot_id} saved.`);
        await load(true);
      }, { aria: `Save tags of ${s.snapshot_id}` }));
    return h('tr', { 'data-snapshot-id': s.snapshot_id },
      cell('Snapshot', h('code', {}, s.snapshot_id)),
      cell('Name', h('span', { class: 'name' }, nameOf(s) || '–'), tags),
      cell('Volume', link(`/volumes/${s.volume_id}`, s.volume_id)),
      cell('Size (GiB)', String(s.volume_size_gib)),
      // What it stores on the node (billed by it), once measured; older snapshots have none.
      cell('Stored', s.stored_bytes === null || s.stored_bytes === undefined ? '–' : bytes(s.stored_bytes)),
      cell('State', badge(s.state), s.state_message ? ` ${s.state_message}` : ''),
      cell('Progress', s.state === 'pending' ? s.progress : (s.progress || '–')),
      cell('Description', s.description || '–'),
      cell('Started', when(s.start_time)),
      h('td', { class: 'cell-action' }, h('div', { class: 'actions' }, mk, del)));
  };
  // force: after a save here. Otherwise a redraw waits while a tag editor is open (it would
  // close it and drop what was typed).
  async function load(force = false) {
    const items = await listAll('/v1/snapshots');
    if (!pg.alive || (!force && body.querySelector('details[open]'))) return;
    if (!changed(shown, items) && !force) return;  // (changed() first: it records what is shown)
    clear(body, items.length ? items.map(row) : h('tr', {}, h('td', { colspan: '10', class: 'cell-action' }, 'No snapshots')));
  }
  await pg.every(3000, async () => { try { await load(); } catch (e) { err.show(e); } });
}

// -- images ----------------------------------------------------------------------------------
const FILTERS = [['all', 'All'], ['public', 'Public'], ['own', 'Owned by me']];

export async function imagesPage(root, pg) {
  document.title = 'Images · Kumo';
  const me = currentSession().account_id;
  const err = errorBox();
  const body = h('tbody');
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  let which = 'all';
  let items = [];
  // GET /v1/images answers every image the account sees (own, public, shared with it):
  // the filter is a view of that list.
  const box = h('fieldset', { class: 'filters' }, h('legend', {}, 'Show'),
    FILTERS.map(([v, l]) => {
      const input = h('input', { type: 'radio', name: 'image-filter', id: `img-f-${v}`, value: v, checked: v === which });
      input.addEventListener('change', () => { which = v; draw(); });
      return h('span', { class: 'choice' }, input, h('label', { for: `img-f-${v}` }, l));
    }));
  const draw = () => {
    const show = items.filter((i) => which === 'all' || (which === 'public' ? i.public : i.owner_account_id === me));
    clear(count, `${show.length} of ${items.length} images`);
    clear(body, show.length ? show.map((i) => h('tr', { 'data-image-id': i.image_id },
      cell('Image', link(`/images/${i.image_id}`, i.image_id)),
      cell('Name', i.name),
      cell('State', badge(i.state)),
      cell('Visibility', i.public ? 'public' : (i.owner_account_id === me ? 'private' : 'shared with me')),
      cell('Owner', i.owner_account_id === me ? 'me' : i.owner_account_id),
      cell('Architecture', i.architecture),
      cell('Size', bytes(i.virtual_size)),
      cell('Created', when(i.created_at)))) : h('tr', {}, h('td', { colspan: '8', class: 'cell-action' }, 'No images')));
  };
  clear(root, h('div', { class: 'bar' }, h('h1', {}, 'Images'), link('/launch', 'Launch instance')),
    box, err, count, h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'images' },
      h('caption', { class: 'sr-only' }, 'Images'),
      head(['Image', 'Name', 'State', 'Visibility', 'Owner', 'Architecture', 'Size', 'Created']), body)));
  const shown = {};
  await pg.every(5000, async () => {
    try {
      items = await listAll('/v1/images');
      err.hide();
      if (pg.alive && changed(shown, items)) draw();
    } catch (e) { err.show(e); }
  });
}

function imageDetails(i, me) {
  const rows = [
    ['Image ID', i.image_id], ['Name', i.name], ['Description', i.description || ''], ['State', i.state],
    ['Reason', i.state_reason || ''], ['Owner', i.owner_account_id === me ? `me (${me})` : i.owner_account_id],
    ['Public', i.public ? 'yes' : 'no'], ['Architecture', i.architecture], ['Format', i.format],
    ['Virtual size', `${bytes(i.virtual_size)} (${i.virtual_size} bytes)`],
    ['File size', `${bytes(i.size)} (${i.size} bytes)`], ['SHA-256', i.sha256], ['Minimum memory', i.min_ram_mib ? `${i.min_ram_mib} MiB` : ''],
    ['Created', when(i.created_at)],
  ];
  const dl = h('dl', { class: 'details', id: 'details' },
    rows.map(([k, v]) => [h('dt', {}, k), h('dd', { 'data-field': k }, v || '–')]));
  if (i.source_instance_id) {
    dl.append(h('dt', {}, 'From instance'), h('dd', { 'data-field': 'From instance' }, link(`/instances/${i.source_instance_id}`, i.source_instance_id)));
  }
  for (const b of i.block_device_mappings || []) {
    dl.append(h('dt', {}, `Volume ${b.device}`), h('dd', {}, `${b.size_gib} GiB${b.snapshot_id ? ` from ${b.snapshot_id}` : ''}`));
  }
  return dl;
}

export async function imagePage(root, pg, id) {
  const enc = encodeURIComponent(id);
  const s = currentSession();
  let img = await api('GET', `/v1/images/${enc}`);
  document.title = `${img.name} · Kumo`;
  const own = img.owner_account_id === s.account_id || s.is_admin;
  const title = h('h1', {});
  const err = errorBox();
  const notice = h('p', { class: 'notice', role: 'status' });
  const detailBox = h('div');
  const launch = h('p', {}, link('/launch', 'Launch instance from this image'),
    h('span', { class: 'hint' }, ' (pick it in the wizard\'s image step)'));
  const permBox = h('section', { 'aria-labelledby': 'lp-h', id: 'launch-permission' }, h('h2', { id: 'lp-h' }, 'Launch permission'));
  const del = button('Deregister image', err, async () => {
    await api('DELETE', `/v1/images/${enc}`);
    location.hash = '#/images';
  }, { danger: true, confirm: true });
  clear(root, h('p', {}, link('/images', '← Images')), title, err, notice, launch,
    h('section', { 'aria-labelledby': 'd-h' }, h('h2', { id: 'd-h' }, 'Details'), detailBox),
    own ? permBox : null, own ? h('div', { class: 'actions' }, del) : null);

  // Launch permission: the public flag (admins only: the API says so to others) and the
  // accounts a private image is shared with; each change is one PUT.
  const permErr = errorBox();
  async function drawPermission() {
    const p = await api('GET', `/v1/images/${enc}/launch-permission`);
    const pub = h('input', { type: 'checkbox', name: 'public', id: 'img-public', checked: p.public });
    const savePub = button('Save visibility', permErr, async () => {
      await api('PUT', `/v1/images/${enc}/launch-permission`, { public: pub.checked });
      clear(notice, pub.checked ? 'Now public.' : 'Now private.');
      await drawPermission();
    });
    const acct = h('input', { name: 'share_account_id', maxlength: '32', autocomplete: 'off' });
    const share = button('Share', permErr, async () => {
      await api('PUT', `/v1/images/${enc}/launch-permission`, { add: [acct.value.trim()] });
      clear(notice, `Shared with ${acct.value.trim()}.`);
      await drawPermission();
    });
    const accounts = h('ul', { id: 'shared-with' }, p.account_ids.length ? p.account_ids.map((a) => h('li', {}, h('code', {}, a), ' ',
      button('Remove', permErr, async () => {
        await api('PUT', `/v1/images/${enc}/launch-permission`, { remove: [a] });
        clear(notice, `No longer shared with ${a}.`);
        await drawPermission();
      }, { aria: `Stop sharing with ${a}` }))) : h('li', {}, 'No other account'));
    clear(permBox, h('h2', { id: 'lp-h' }, 'Launch permission'), permErr,
      h('div', { class: 'inline' }, h('div', { class: 'field check' }, pub, h('label', { for: 'img-public' }, 'Public (every account may launch it)')), savePub),
      h('h3', {}, 'Shared with'), accounts,
      h('div', { class: 'inline' }, field('Account ID', acct, 'Share with another account.'), share));
  }

  async function refresh() {
    img = await api('GET', `/v1/images/${enc}`);
    clear(title, `${img.name} (${img.image_id})`);
    clear(detailBox, imageDetails(img, s.account_id));
    launch.hidden = img.state !== 'available';
  }
  await refresh();
  if (own) await drawPermission().catch((e) => permErr.show(e));
  // A captured image is pending for a while: follow it until it settles.
  await pg.every(3000, async () => {
    if (img.state !== 'pending') return;
    try { await refresh(); } catch (e) { err.show(e); }
  });
}
