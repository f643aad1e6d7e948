// Auto Scaling: the groups list (live) with the create form, and one group's page: details,
// desired capacity, members, capacity over time (the group controller's AWS/AutoScaling
// metrics from GET /v1/metrics/statistics, drawn with the vendored uPlot, with the same points
// as a table), activity history, target tracking scaling policies (put, delete), scheduled
// actions, and deleting the group (a second click confirms; forced only when asked). Every
// change is one API call; a refusal is shown as the API said it.
import uPlot from '../vendor/uplot-1.6.32/uPlot.esm.js';
import { api, listAll } from './api.js';
import { clear, errorBox, field, h, link } from './dom.js';

const enc = encodeURIComponent;
const dash = (v) => (v === null || v === undefined || v === '' ? '–' : String(v));
const when = (t) => (t ? new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–');

function counts(g) {
  const by = (f, v) => g.instances.filter((m) => m[f] === v).length;
  return { inService: by('lifecycle_state', 'InService'), pending: by('lifecycle_state', 'Pending'),
    healthy: by('health_status', 'Healthy'), unhealthy: g.instances.length - by('health_status', 'Healthy') };
}

// Groups name their template by id: shown by name when the template is known.
const templateNames = new Map();
function template(g) {
  const t = g.launch_template;
  const name = t.launch_template_name || templateNames.get(t.launch_template_id) || t.launch_template_id;
  return `${name} (${t.version})`;
}

async function loadTemplates() {
  const list = await listAll('/v1/launch-templates').catch(() => []);
  for (const t of list) templateNames.set(t.launch_template_id, t.launch_template_name);
  return list;
}

const COLUMNS = [
  ['Name', (g) => link(`/autoscaling/${g.auto_scaling_group_name}`, g.auto_scaling_group_name)],
  ['Launch template', template],
  ['Min', (g) => g.min_size],
  ['Desired', (g) => g.desired_capacity],
  ['Max', (g) => g.max_size],
  ['In service', (g) => { const c = counts(g); return `${c.inService}${c.pending ? ` (+${c.pending} pending)` : ''}`; }],
  ['Health', (g) => { const c = counts(g); return c.unhealthy ? `${c.healthy} healthy, ${c.unhealthy} unhealthy` : `${c.healthy} healthy`; }],
  ['Status', (g) => g.status || 'Active'],
];

function numberInput(name, value) {
  return h('input', { type: 'number', name, min: '0', max: '1000', step: '1', value: value === undefined ? '' : String(value) });
}

function intOrNull(input) {
  return input.value.trim() === '' ? null : Number(input.value);
}

// The create form: one POST /v1/autoscaling-groups; on success, the new group's page.
async function createForm(onCreated) {
  const err = errorBox();
  const name = h('input', { name: 'group_name', required: true, autocomplete: 'off' });
  const tmpl = h('select', { name: 'launch_template' });
  const version = h('input', { name: 'version', value: '$Default' });
  const subnets = h('select', { name: 'subnets', multiple: true, size: '4' });
  const min = numberInput('min_size', 1);
  const max = numberInput('max_size', 2);
  const desired = numberInput('desired_capacity');
  const [templates, subs] = await Promise.all([loadTemplates(), listAll('/v1/subnets').catch(() => [])]);
  clear(tmpl, templates.length ? templates.map((t) => h('option', { value: t.launch_template_id },
    `${t.launch_template_name} (${t.launch_template_id})`)) : h('option', { value: '' }, 'No launch templates'));
  clear(subnets, subs.map((s, i) => h('option', { value: s.subnet_id, selected: i === 0 },
    `${s.subnet_id} ${s.cidr_block} (${s.vpc_id})`)));
  const submit = h('button', { type: 'submit' }, 'Create group');
  const form = h('form', { class: 'form', id: 'create-group', 'aria-labelledby': 'cg-h' },
    h('h2', { id: 'cg-h' }, 'Create Auto Scaling group'), err,
    field('Group name', name), field('Launch template', tmpl),
    field('Template version', version, '$Default, $Latest or a version number'),
    field('Subnets', subnets, 'One or more subnets of one VPC'),
    h('div', { class: 'inline' }, field('Minimum size', min), field('Maximum size', max),
      field('Desired capacity', desired, 'Empty: the minimum')),
    submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    submit.disabled = true;
    const body = {
      auto_scaling_group_name: name.value.trim(),
      launch_template: { launch_template_id: tmpl.value || null, version: version.value.trim() || '$Default' },
      min_size: intOrNull(min), max_size: intOrNull(max),
      subnet_ids: [...subnets.selectedOptions].map((o) => o.value),
    };
    if (intOrNull(desired) !== null) body.desired_capacity = intOrNull(desired);
    try {
      const g = await api('POST', '/v1/autoscaling-groups', body);
      onCreated(g);
    } catch (e) { err.show(e); } finally { submit.disabled = false; }
  });
  return form;
}

export async function scalingGroupsPage(root, pg) {
  document.title = 'Auto Scaling groups · Kumo';
  const err = errorBox();
  const body = h('tbody');
  const count = h('p', { class: 'count', 'aria-live': 'polite' });
  const table = h('table', { class: 'list', id: 'scaling-groups' },
    h('caption', { class: 'sr-only' }, 'Auto Scaling groups'),
    h('thead', {}, h('tr', {}, COLUMNS.map(([t]) => h('th', { scope: 'col' }, t)))), body);
  const form = await createForm((g) => { location.hash = `#/autoscaling/${enc(g.auto_scaling_group_name)}`; });
  clear(root, h('h1', {}, 'Auto Scaling groups'), err, count, h('div', { class: 'scroll' }, table), form);
  await pg.every(3000, async () => {
    try {
      const items = await listAll('/v1/autoscaling-groups');
      if (!pg.alive) return;
      clear(body, items.map((g) => h('tr', { 'data-group': g.auto_scaling_group_name },
        COLUMNS.map(([t, cell]) => h('td', { 'data-label': t }, cell(g))))));
      clear(count, `${items.length} groups`);
      err.hide();
    } catch (e) { err.show(e); }
  });
}

// -- capacity over time --------------------------------------------------------------------------
const stepped = uPlot.paths.stepped({ align: 1 });
const WINDOW_S = 3600;
const PERIOD_S = 60;
const SERIES = [
  { metric: 'GroupDesiredCapacity', label: 'Desired', stroke: '#0b5cad' },
  { metric: 'GroupInServiceInstances', label: 'In service', stroke: '#1a7f37' },
];

async function groupSeries(name, metric, start, end) {
  const q = new URLSearchParams({
    namespace: 'AWS/AutoScaling', metric_name: metric, dimension: `AutoScalingGroupName=${name}`,
    start_time: start.toISOString(), end_time: end.toISOString(), period: String(PERIOD_S), statistics: 'Maximum',
  });
  const doc = await api('GET', `/v1/metrics/statistics?${q}`);
  return doc.datapoints.map((d) => [Date.parse(d.timestamp) / 1000, d.Maximum]);
}

// The chart, and the same points as a table (screen readers, and a check that the drawing
// shows what the API answered).
function capacityChart(name) {
  const plotBox = h('div', { class: 'chart-plot', 'aria-hidden': 'true' });
  const summary = h('p', { class: 'chart-summary', id: 'chart-capacity-summary' }, 'No data yet');
  const rows = h('tbody');
  const table = h('table', { class: 'list', id: 'capacity-points' },
    h('caption', {}, 'Capacity per minute (maximum)'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Minute (UTC)'),
      SERIES.map((s) => h('th', { scope: 'col' }, s.label)))), rows);
  const box = h('figure', { class: 'chart', id: 'chart-capacity', 'aria-labelledby': 'chart-capacity-title' },
    h('figcaption', { id: 'chart-capacity-title' }, 'Capacity (instances, last hour)'), plotBox, summary,
    h('details', {}, h('summary', {}, 'Data table'), table));
  let plot = null;
  async function update() {
    // Whole minutes: each point is one clock minute (and the window is on the figure, so the
    // points can be checked against the API).
    const end = new Date();
    const start = new Date(Math.floor(end.getTime() / 60000) * 60000 - WINDOW_S * 1000);
    const series = await Promise.all(SERIES.map((s) => groupSeries(name, s.metric, start, end)));
    const xs = [...new Set(series.flat().map(([t]) => t))].sort((a, b) => a - b);
    if (!xs.length) { clear(summary, 'No data yet'); return; }
    const data = [xs, ...series.map((s) => { const at = new Map(s); return xs.map((t) => (at.has(t) ? at.get(t) : null)); })];
    box.dataset.points = String(xs.length);
    clear(summary, SERIES.map((s, i) => `${s.label}: ${dash([...data[i + 1]].reverse().find((v) => v !== null))}`).join(' · '));
    clear(rows, xs.map((t, j) => h('tr', { 'data-ts': String(t) },
      h('td', { 'data-label': 'Minute (UTC)' }, when(t * 1000)),
      SERIES.map((s, i) => h('td', { 'data-label': s.label, 'data-metric': s.metric }, dash(data[i + 1][j]))))));
    const width = Math.max(plotBox.clientWidth || box.clientWidth || 300, 240);
    if (plot && plot.width !== width) { plot.destroy(); plot = null; }
    if (!plot) {
      plot = new uPlot({
        width, height: 180,
        // Capacity is a count that jumps: drawn as steps, not slopes between minutes.
        series: [{}, ...SERIES.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, paths: stepped }))],
        scales: { y: { range: (u, lo, hi) => [0, Math.max(1, hi + 1)] } },
        axes: [{}, { size: 50, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }],
        legend: { show: true },
      }, data, plotBox);
      box.plot = plot;  // for tests and debugging: the drawn data is plot.data
    } else {
      plot.setData(data);
    }
    box.dataset.start = start.toISOString();
    box.dataset.end = end.toISOString();
  }
  return { box, update };
}

// -- one group -----------------------------------------------------------------------------------
function details(g) {
  const rows = [
    ['Name', g.auto_scaling_group_name], ['Group ID', g.auto_scaling_group_id], ['Launch template', template(g)],
    ['Minimum size', g.min_size], ['Desired capacity', g.desired_capacity], ['Maximum size', g.max_size],
    ['VPC', g.vpc_id], ['Subnets', g.subnet_ids.join(', ')], ['Status', g.status || 'Active'],
    ['Health check grace period', `${g.health_check_grace_period} s`], ['Default cooldown', `${g.default_cooldown} s`],
    ['Termination policies', g.termination_policies.join(', ')], ['Created', when(g.created_time)],
  ];
  return h('dl', { class: 'details', id: 'details' },
    rows.map(([k, v]) => [h('dt', {}, k), h('dd', { 'data-field': k }, dash(v))]));
}

function tableOf(id, caption, cols, items, key) {
  return h('table', { class: 'list', id },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, cols.map(([t]) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, items.map((it) => h('tr', key ? { 'data-key': key(it) } : {},
      cols.map(([t, cell]) => h('td', { 'data-label': t }, cell(it)))))));
}

const MEMBER_COLS = [
  ['Instance', (m) => link(`/instances/${m.instance_id}`, m.instance_id)],
  ['Lifecycle', (m) => m.lifecycle_state], ['Health', (m) => m.health_status],
  ['Protected', (m) => (m.protected_from_scale_in ? 'yes' : 'no')], ['Subnet', (m) => dash(m.subnet_id)],
  ['Template version', (m) => m.launch_template_version], ['Launched', (m) => when(m.launch_time)],
];
const ACTIVITY_COLS = [
  ['Start', (a) => when(a.start_time)], ['End', (a) => when(a.end_time)],
  ['Status', (a) => h('span', { class: `badge activity-${a.status_code}` }, a.status_code)],
  ['Description', (a) => a.description], ['Cause', (a) => a.cause], ['Message', (a) => dash(a.status_message)],
];

function policyText(p) {
  if (p.policy_type === 'TargetTrackingScaling' && p.target_tracking_configuration) {
    const t = p.target_tracking_configuration;
    return `${t.predefined_metric_specification.predefined_metric_type} at ${t.target_value}${t.disable_scale_in ? ' (no scale-in)' : ''}`;
  }
  if (p.policy_type === 'SimpleScaling') return `${p.adjustment_type} ${p.scaling_adjustment}`;
  if (p.policy_type === 'StepScaling') return `${p.adjustment_type}, ${(p.step_adjustments || []).length} steps`;
  return '';
}
const POLICY_COLS = [
  ['Policy', (p) => p.policy_name], ['Type', (p) => p.policy_type], ['Configuration', policyText],
  ['Warm-up', (p) => (p.estimated_instance_warmup === null || p.estimated_instance_warmup === undefined ? '–' : `${p.estimated_instance_warmup} s`)],
  ['Scale-in period', (p) => (p.scale_in_period === null || p.scale_in_period === undefined ? '–' : `${p.scale_in_period} s`)],
  ['Alarms', (p) => (p.alarms || []).map((a) => a.alarm_name).join(', ') || '–'],
];

// A number field sent as typed: the API, not the page, says what is wrong with it.
function numberOrText(input) {
  const v = input.value.trim();
  if (v === '') return null;
  return Number.isFinite(Number(v)) ? Number(v) : v;
}

export async function scalingGroupPage(root, pg, name) {
  const base = `/v1/autoscaling-groups/${enc(name)}`;
  const err = errorBox();
  const notice = h('p', { class: 'notice', role: 'status' });
  let g = await api('GET', base);
  await loadTemplates();
  document.title = `${g.auto_scaling_group_name} · Kumo`;
  const detailBox = h('div');
  const members = h('div', { class: 'scroll' });
  const activities = h('div', { class: 'scroll' });
  const policies = h('div', { class: 'scroll' });
  const actions = h('div', { class: 'scroll' });
  const chart = capacityChart(g.auto_scaling_group_name);

  // Desired capacity: POST .../desired-capacity.
  const desiredErr = errorBox();
  const desired = numberInput('desired_capacity', g.desired_capacity);
  // Follows the group (a policy or schedule may move it) until the user types in it.
  let desiredEdited = false;
  desired.addEventListener('input', () => { desiredEdited = true; });
  const setDesired = h('button', { type: 'submit' }, 'Set desired capacity');
  const desiredForm = h('form', { class: 'inline', id: 'desired-form' }, field('Desired capacity', desired), setDesired);
  desiredForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    desiredErr.hide();
    clear(notice);
    setDesired.disabled = true;
    try {
      g = await api('POST', `${base}/desired-capacity`, { desired_capacity: intOrNull(desired) });
      clear(notice, `Desired capacity set to ${g.desired_capacity}.`);
      desiredEdited = false;
      await refresh();
    } catch (e) { desiredErr.show(e); } finally { setDesired.disabled = false; }
  });

  // Scheduled actions: PUT .../scheduled-actions/{name} creates (or replaces) one.
  const actErr = errorBox();
  const actName = h('input', { name: 'action_name', autocomplete: 'off' });
  const recurrence = h('input', { name: 'recurrence', placeholder: '0 8 * * 1-5' });
  const tz = h('input', { name: 'time_zone', value: 'Etc/UTC' });
  const aMin = numberInput('action_min');
  const aMax = numberInput('action_max');
  const aDesired = numberInput('action_desired');
  const addAction = h('button', { type: 'submit' }, 'Save scheduled action');
  const actionForm = h('form', { class: 'form', id: 'action-form', 'aria-labelledby': 'sa-new-h' },
    h('h3', { id: 'sa-new-h' }, 'New scheduled action'), actErr,
    field('Action name', actName), field('Recurrence (cron)', recurrence, 'Five fields: minute hour day month weekday'),
    field('Time zone', tz),
    h('div', { class: 'inline' }, field('Action minimum', aMin), field('Action maximum', aMax),
      field('Action desired', aDesired, 'Empty fields stay as they are')),
    addAction);
  actionForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    actErr.hide();
    addAction.disabled = true;
    try {
      await api('PUT', `${base}/scheduled-actions/${enc(actName.value.trim())}`, {
        recurrence: recurrence.value.trim(), time_zone: tz.value.trim() || 'Etc/UTC',
        min_size: intOrNull(aMin), max_size: intOrNull(aMax), desired_capacity: intOrNull(aDesired),
      });
      clear(notice, `Scheduled action ${actName.value.trim()} saved.`);
      await refreshActions();
    } catch (e) { actErr.show(e); } finally { addAction.disabled = false; }
  });

  // Target tracking policies: PUT .../policies/{name} creates or replaces one (the API's only
  // predefined metric is the group's average CPU).
  const polErr = errorBox();
  const polName = h('input', { name: 'policy_name', autocomplete: 'off' });
  const metric = h('select', { name: 'predefined_metric_type' },
    h('option', { value: 'ASGAverageCPUUtilization' }, 'Average CPU utilization (ASGAverageCPUUtilization)'));
  const target = h('input', { type: 'number', name: 'target_value', min: '0', max: '100', step: 'any', value: '50' });
  const noScaleIn = h('input', { type: 'checkbox', name: 'disable_scale_in', id: 'pol-no-scale-in' });
  const warmup = h('input', { type: 'number', name: 'estimated_instance_warmup', min: '0', max: '3600', step: '1' });
  const scaleInPeriod = h('input', { type: 'number', name: 'scale_in_period', min: '0', max: '3600', step: '1' });
  const savePolicy = h('button', { type: 'submit' }, 'Save policy');
  const policyForm = // novalidate: a target out of range goes to the API, which says why (not the browser's bubble).
    h('form', { class: 'form', id: 'policy-form', 'aria-labelledby': 'sp-new-h', novalidate: true },
    h('h3', { id: 'sp-new-h' }, 'Target tracking policy'), polErr,
    h('p', { class: 'hint' }, 'Saving under an existing name replaces that policy.'),
    field('Policy name', polName), field('Metric', metric),
    field('Target value (%)', target, 'Above 0, at most 100'),
    h('div', { class: 'field check' }, noScaleIn, h('label', { for: 'pol-no-scale-in' }, 'Disable scale-in')),
    h('div', { class: 'inline' }, field('Instance warm-up (s)', warmup, 'Empty: the group\'s default'),
      field('Scale-in period (s)', scaleInPeriod, 'Empty: the controller\'s default')),
    savePolicy);
  policyForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    polErr.hide();
    savePolicy.disabled = true;
    const pname = polName.value.trim();
    try {
      await api('PUT', `${base}/policies/${enc(pname)}`, {
        policy_type: 'TargetTrackingScaling',
        target_tracking_configuration: {
          predefined_metric_specification: { predefined_metric_type: metric.value },
          target_value: numberOrText(target), disable_scale_in: noScaleIn.checked,
        },
        estimated_instance_warmup: numberOrText(warmup), scale_in_period: numberOrText(scaleInPeriod),
      });
      clear(notice, `Scaling policy ${pname} saved.`);
      await refresh();
    } catch (e) { polErr.show(e); } finally { savePolicy.disabled = false; }
  });
  const deletePolicy = (p) => {
    const b = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete policy ${p.policy_name}` }, 'Delete');
    b.addEventListener('click', async () => {
      polErr.hide();
      b.disabled = true;
      try {
        await api('DELETE', `${base}/policies/${enc(p.policy_name)}`);
        clear(notice, `Scaling policy ${p.policy_name} deleted.`);
        await refresh();
      } catch (e) { polErr.show(e); b.disabled = false; }
    });
    return b;
  };

  // Delete the group: the first click arms, the second deletes. Without "force" the API refuses
  // a group that still has instances (ResourceInUse), and that refusal is shown.
  const delErr = errorBox();
  const force = h('input', { type: 'checkbox', name: 'force', id: 'group-force' });
  const delGroup = h('button', { type: 'button', class: 'danger' }, 'Delete group');
  const disarm = () => { delete delGroup.dataset.armed; delGroup.textContent = 'Delete group'; };
  force.addEventListener('change', disarm);
  delGroup.addEventListener('click', async () => {
    delErr.hide();
    if (!delGroup.dataset.armed) { delGroup.dataset.armed = '1'; delGroup.textContent = 'Confirm: delete group'; return; }
    disarm();
    delGroup.disabled = true;
    try {
      await api('DELETE', force.checked ? `${base}?force=true` : base);
      location.hash = '#/autoscaling';
    } catch (e) { delErr.show(e); } finally { delGroup.disabled = false; }
  });
  const deleteBox = h('section', { 'aria-labelledby': 'del-h', id: 'delete-group' }, h('h2', { id: 'del-h' }, 'Delete group'), delErr,
    h('div', { class: 'field check' }, force, h('label', { for: 'group-force' }, 'Also terminate its instances (force)')),
    h('div', { class: 'actions' }, delGroup));

  const section = (id, title, ...content) => h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...content);
  clear(root, h('p', {}, link('/autoscaling', '← Auto Scaling groups')),
    h('h1', {}, `Auto Scaling group ${g.auto_scaling_group_name}`), err, notice,
    desiredErr, desiredForm,
    section('d-h', 'Details', detailBox),
    section('i-h', 'Instances', members),
    section('c-h', 'Capacity over time', chart.box),
    section('a-h', 'Activity history', activities),
    section('p-h', 'Scaling policies', policies, policyForm),
    section('s-h', 'Scheduled actions', actions, actionForm),
    deleteBox);

  async function refreshActions() {
    const list = await api('GET', `${base}/scheduled-actions`);
    const del = (a) => {
      const b = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete scheduled action ${a.scheduled_action_name}` }, 'Delete');
      b.addEventListener('click', async () => {
        actErr.hide();
        try {
          await api('DELETE', `${base}/scheduled-actions/${enc(a.scheduled_action_name)}`);
          clear(notice, `Scheduled action ${a.scheduled_action_name} deleted.`);
          await refreshActions();
        } catch (e) { actErr.show(e); }
      });
      return b;
    };
    clear(actions, list.length ? tableOf('scheduled-actions', 'Scheduled actions', [
      ['Action', (a) => a.scheduled_action_name], ['Recurrence', (a) => (a.recurrence ? `${a.recurrence} (${a.time_zone})` : `once, at ${a.start_time}`)],
      ['Min', (a) => dash(a.min_size)], ['Desired', (a) => dash(a.desired_capacity)], ['Max', (a) => dash(a.max_size)],
      ['Next', (a) => when(a.next_occurrence)], ['Last', (a) => when(a.last_occurrence)], ['', del],
    ], list, (a) => a.scheduled_action_name) : h('p', { id: 'scheduled-actions' }, 'No scheduled actions.'));
  }

  async function refresh() {
    g = await api('GET', base);
    clear(detailBox, details(g));
    if (!desiredEdited) desired.value = String(g.desired_capacity);
    clear(members, g.instances.length ? tableOf('members', 'Instances', MEMBER_COLS, g.instances, (m) => m.instance_id)
      : h('p', { id: 'members' }, 'No instances.'));
    // Oldest first from the API; the newest are what one looks for.
    const acts = (await listAll(`${base}/activities`)).reverse().slice(0, 100);
    clear(activities, acts.length ? tableOf('activities', 'Activity history', ACTIVITY_COLS, acts, (a) => a.activity_id)
      : h('p', { id: 'activities' }, 'No activities yet.'));
    const pols = await api('GET', `${base}/policies`);
    clear(policies, pols.length ? tableOf('policies', 'Scaling policies', [...POLICY_COLS, ['', deletePolicy]], pols, (p) => p.policy_name)
      : h('p', { id: 'policies' }, 'No scaling policies.'));
  }

  await refreshActions().catch((e) => actErr.show(e));
  await pg.every(3000, async () => {
    try { await refresh(); err.hide(); } catch (e) { err.show(e); if (e.status === 404) pg.close(); }
  });
  // Samples come every few seconds and points are per minute: a slower refresh is enough.
  await pg.every(10000, async () => {
    try { await chart.update(); } catch (e) { /* "No data yet" stays; the page goes on */ }
  });
}
