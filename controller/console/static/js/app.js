// The console's shell: the hash router (ROUTES below: each area's pages live in their own
// module), the header, the sign-in page and the dashboard. Each page gets a Page context whose timers
// (live updates) stop when the user leaves it.
import { api, currentSession, listAll, loadSession, onSessionChange, signIn, signOut } from './api.js';
import { clear, errorBox, field, h, money } from './dom.js';
import { instancePage, instancesPage } from './instances.js';
import { groupPage, groupsPage } from './groups.js';
import { launchPage } from './launch.js';
import { elasticIpsPage, gatewaysPage, routeTablePage, routeTablesPage, subnetsPage, vpcPage, vpcsPage } from './networks.js';
import { imagePage, imagesPage, snapshotsPage, volumePage, volumesPage } from './storage.js';
import { scalingGroupPage, scalingGroupsPage } from './scaling.js';
import { billingPage } from './billing.js';
import { accountsPage, hostsPage, instanceTypesPage } from './admin.js';

const main = document.getElementById('main');
let page = null;

class Page {
  constructor() { this.alive = true; this.timers = []; }
  // Run fn now and every ms while the page is shown (one run at a time).
  every(ms, fn) {
    let busy = false;
    const run = async () => {
      if (!this.alive || busy) return;
      busy = true;
      try { await fn(); } finally { busy = false; }
    };
    this.timers.push(setInterval(run, ms));
    return run();
  }
  close() { this.alive = false; this.timers.forEach(clearInterval); }
}

function go(path) { location.hash = '#' + path; }

// Route patterns: ':id' matches one (URL-decoded) path segment, passed to the page after
// (root, page). Each page function draws into root and registers its live updates on page.
const ROUTES = [
  ['/instances', instancesPage],
  ['/instances/:id', instancePage],
  ['/launch', (root, pg) => launchPage(root, pg, go)],
  ['/security-groups', groupsPage],
  ['/security-groups/:id', groupPage],
  ['/vpcs', vpcsPage],
  ['/vpcs/:id', vpcPage],
  ['/subnets', subnetsPage],
  ['/route-tables', routeTablesPage],
  ['/route-tables/:id', routeTablePage],
  ['/gateways', gatewaysPage],
  ['/elastic-ips', elasticIpsPage],
  ['/volumes', volumesPage],
  ['/volumes/:id', volumePage],
  ['/snapshots', snapshotsPage],
  ['/images', imagesPage],
  ['/images/:id', imagePage],
  ['/autoscaling', scalingGroupsPage],
  ['/autoscaling/:id', scalingGroupPage],
  ['/billing', billingPage],
  ['/admin/hosts', hostsPage],
  ['/admin/accounts', accountsPage],
  ['/admin/instance-types', instanceTypesPage],
];

function match(parts) {
  for (const [pattern, fn] of ROUTES) {
    const want = pattern.split('/').filter(Boolean);
    if (want.length !== parts.length) continue;
    const args = [];
    if (want.every((w, i) => (w.startsWith(':') ? (args.push(parts[i]), true) : w === parts[i]))) {
      return [fn, args];
    }
  }
  return [null, []];
}

let shown = null;  // what is on screen: signed in or out, and the route

async function render() {
  const route = decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
  if (!currentSession() && route !== '/signin') { go('/signin'); return; }
  if (currentSession() && route === '/signin') { go('/'); return; }
  // The start-up's redirect queues a hashchange that arrives after its page is already shown:
  // drawing that page again would replace the form under the user's fingers, and its focus.
  const state = `${currentSession() ? 'in' : 'out'} ${route}`;
  if (state === shown && page && page.alive) return;
  shown = state;
  if (page) page.close();
  page = new Page();
  clear(main);
  main.focus({ preventScroll: true });
  // Segments are decoded one by one: an id holding '%2F' stays one segment.
  const parts = location.hash.replace(/^#/, '').split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (route === '/signin') signInPage(main);
    else if (parts.length === 0) await dashboard(main, page);
    else {
      const [fn, args] = match(parts);
      if (fn) await fn(main, page, ...args);
      else clear(main, h('h1', {}, 'Not found'), h('p', {}, 'No such console page.'));
    }
  } catch (e) {
    const box = errorBox();
    clear(main, h('h1', {}, 'Something went wrong'), box);
    box.show(e);
  }
}

function signInPage(root) {
  document.title = 'Sign in · Kumo';
  const err = errorBox();
  const user = h('input', { name: 'username', autocomplete: 'username', autocapitalize: 'none' });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const key = h('input', { name: 'api_key', type: 'password', autocomplete: 'off' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to Kumo'),
    field('Username', user), field('Password', pass),
    h('p', { class: 'or' }, 'or'),
    field('API key', key, 'Instead of a username and password.'),
    err, submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hide();
    submit.disabled = true;
    const creds = key.value ? { api_key: key.value } : { username: user.value, password: pass.value };
    try {
      await signIn(creds);
      go('/');
    } catch (e) {
      err.show(e);
      pass.value = '';
    } finally {
      submit.disabled = false;
    }
  });
  clear(root, form);
  user.focus();
}

const STATES = ['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'];

async function dashboard(root, pg) {
  document.title = 'Dashboard · Kumo';
  const counts = h('ul', { class: 'tiles', 'aria-label': 'Instances by state' });
  const cost = h('p', { class: 'cost', 'aria-live': 'polite' }, '…');
  const err = errorBox();
  clear(root, h('h1', {}, 'Dashboard'), err,
    h('section', { 'aria-labelledby': 'by-state' }, h('h2', { id: 'by-state' }, 'Instances by state'), counts),
    h('section', { 'aria-labelledby': 'month-cost' }, h('h2', { id: 'month-cost' }, 'This month so far'), cost));
  if (currentSession().is_admin) {
    const hosts = h('table', { class: 'list', id: 'hosts' },
      h('thead', {}, h('tr', {}, ['Host', 'State', 'vCPUs used', 'Memory used (MiB)'].map((t) => h('th', { scope: 'col' }, t)))));
    root.append(h('section', { 'aria-labelledby': 'cap' }, h('h2', { id: 'cap' }, 'Hosts\' capacity'),
      h('div', { class: 'scroll' }, hosts)));
    const hostRow = (x) => h('tr', {},
      h('td', { 'data-label': 'Host' }, x.host_id),
      h('td', { 'data-label': 'State' }, `${x.state}${x.enabled ? '' : ' (disabled)'}`),
      h('td', { 'data-label': 'vCPUs used' }, `${x.vcpus_used} / ${x.vcpus}`),
      h('td', { 'data-label': 'Memory used (MiB)' }, `${x.memory_mib_used} / ${x.memory_mib}`));
    listAll('/v1/hosts')
      .then((items) => hosts.append(h('tbody', {}, items.map(hostRow))))
      .catch((e) => err.show(e));
  }
  const month = new Date().toISOString().slice(0, 7);
  try {
    const bill = await api('GET', `/v1/bills/${month}`);
    clear(cost, h('strong', { id: 'month-total' }, money(bill.total, bill.currency)),
      ` (${month}, as of ${bill.as_of})`);
  } catch (e) {
    clear(cost, 'Not available: ', e.message);
  }
  await pg.every(5000, async () => {
    try {
      const items = await listAll('/v1/instances');
      const by = Object.fromEntries(STATES.map((s) => [s, 0]));
      for (const i of items) by[i.state] = (by[i.state] || 0) + 1;
      clear(counts, Object.entries(by).map(([s, n]) =>
        h('li', { class: `tile state-${s}`, 'data-state': s },
          h('span', { class: 'n' }, String(n)), h('span', { class: 'label' }, s))));
      err.hide();
    } catch (e) { err.show(e); }
  });
}

async function start() {
  const top = document.getElementById('top');
  const who = document.getElementById('who');
  onSessionChange((s) => {
    top.hidden = !s;
    document.getElementById('admin-nav').hidden = !(s && s.is_admin);
    clear(who, s ? `${s.username || 'API key'} @ ${s.account_name}` : '');
    if (!s && location.hash !== '#/signin') go('/signin');
  });
  // Phones: the nav folds behind a Menu button (style.css), and folds again after each move.
  const menu = document.getElementById('menu');
  const setMenu = (open) => {
    menu.setAttribute('aria-expanded', String(open));
    document.getElementById('main-nav').classList.toggle('open', open);
  };
  menu.addEventListener('click', () => setMenu(menu.getAttribute('aria-expanded') !== 'true'));
  window.addEventListener('hashchange', () => setMenu(false));
  // Every form is handled by its page's script. A submit that comes before the page attached
  // its handler (the page still loading its lists) must not fall through to the browser's own
  // GET submit: that reloads the console and loses what the user typed.
  document.addEventListener('submit', (ev) => ev.preventDefault(), true);
  document.getElementById('signout').addEventListener('click', async () => {
    await signOut().catch(() => {});
    go('/signin');
  });
  await loadSession().catch(() => {});
  window.addEventListener('hashchange', render);
  await render();
}

start();
