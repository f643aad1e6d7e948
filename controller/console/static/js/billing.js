// Billing: this month's open bill (total, as of, lines by usage type or by resource), the bills
// of recent months, a chosen month's bill, a usage query for any period (GET /v1/usage) with a
// CSV download, and the account's budget (GET/PUT/DELETE /v1/budget). Admins choose the account
// (GET /v1/bills?month= answers every account's bill for them). Money is shown as the API's
// decimal strings, never recomputed by floats.
import { ApiError, api, currentSession, listAll } from './api.js';
import { clear, errorBox, field, h, money } from './dom.js';

const enc = encodeURIComponent;
const dash = (v) => (v === null || v === undefined || v === '' ? '–' : String(v));
const thisMonth = () => new Date().toISOString().slice(0, 7);

function monthsBack(n) {
  const d = new Date();
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push(new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - i, 1)).toISOString().slice(0, 7));
  }
  return out;
}

function monthBounds(month) {
  const [y, m] = month.split('-').map(Number);
  return [new Date(Date.UTC(y, m - 1, 1)).toISOString(), new Date(Date.UTC(y, m, 1)).toISOString()];
}

function table(id, caption, cols, items) {
  return h('table', { class: 'list', id },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, cols.map(([t]) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, items.map((it) => h('tr', {}, cols.map(([t, cell]) => h('td', { 'data-label': t }, dash(cell(it))))))));
}

const BY_TYPE = [
  ['Usage type', (l) => l.usage_type], ['Dimension', (l) => l.dimension], ['Quantity', (l) => l.quantity],
  ['Unit', (l) => l.unit], ['Rate', (l) => l.rate], ['Amount', (l) => l.amount],
];
const BY_RESOURCE = [
  ['Resource', (l) => l.resource_id], ['Kind', (l) => l.kind], ['Usage type', (l) => l.usage_type],
  ['Dimension', (l) => l.dimension], ['Quantity', (l) => l.quantity], ['Unit', (l) => l.unit],
  ['Rate', (l) => l.rate], ['Amount', (l) => l.amount],
];
const USAGE_COLS = {
  none: [['Resource', (l) => l.resource_id], ['Usage type', (l) => l.usage_type], ['Dimension', (l) => l.dimension],
    ['Day', (l) => l.day], ['Quantity', (l) => l.quantity], ['Unit', (l) => l.unit], ['Rate', (l) => l.rate],
    ['Amount', (l) => l.amount]],
  resource: BY_RESOURCE,
  usage_type: BY_TYPE,
  day: [['Day', (l) => l.day], ['Amount', (l) => l.amount]],
};

// A CSV answer downloaded with the session cookie: fetch, then a blob: URL clicked through an
// <a download> (the CSP allows only 'self' for fetches; a blob download needs no change).
async function downloadCsv(path, filename) {
  const r = await fetch(path, { headers: { Accept: 'text/csv' }, credentials: 'same-origin', cache: 'no-store' });
  if (!r.ok) {
    let e = null;
    try { e = (await r.json()).error; } catch (x) { e = null; }
    throw new ApiError(r.status, (e && e.code) || 'HttpError', (e && e.message) || `HTTP ${r.status}`);
  }
  const url = URL.createObjectURL(await r.blob());
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export async function billingPage(root, pg) {
  document.title = 'Billing · Kumo';
  const session = currentSession();
  const err = errorBox();
  const acctQ = () => (account.value && account.value !== session.account_id ? `account_id=${enc(account.value)}` : '');
  const withAcct = (path) => { const q = acctQ(); return q ? `${path}${path.includes('?') ? '&' : '?'}${q}` : path; };

  // Admins: whose bills. Others see their own only (no selector).
  const account = h('select', { name: 'account' });
  const accountField = field('Account', account);
  if (session.is_admin) {
    const accts = await listAll('/v1/accounts').catch(() => []);
    clear(account, accts.map((a) => h('option', { value: a.account_id, selected: a.account_id === session.account_id },
      `${a.name} (${a.account_id})`)));
  } else {
    accountField.hidden = true;
  }

  // -- the open bill of this month -------------------------------------------------------------
  const openBox = h('div', { id: 'open-bill' });
  const grouping = h('select', { name: 'bill_grouping' },
    h('option', { value: 'usage_type' }, 'Usage type'), h('option', { value: 'resource' }, 'Resource'));
  async function drawBill(box, month) {
    const bill = await api('GET', withAcct(`/v1/bills/${enc(month)}`));
    let lines = bill.lines;
    let cols = BY_TYPE;
    if (grouping.value === 'resource') {
      const [start, end] = monthBounds(month);
      const doc = await api('GET', withAcct(`/v1/usage?${new URLSearchParams({ start, end, group_by: 'resource' })}`));
      lines = doc.items;
      cols = BY_RESOURCE;
    }
    const b = bill.budget;
    clear(box,
      h('p', { class: 'cost' }, 'Total: ', h('strong', { class: 'bill-total' }, money(bill.total, bill.currency)),
        ` (${bill.month}, ${bill.status}, as of ${bill.as_of})`),
      b ? h('p', { class: b.exceeded ? 'notice warn' : 'notice' },
        `Budget ${money(b.monthly_limit, bill.currency)}: ${b.exceeded ? `exceeded at ${b.exceeded_at}` : 'within'}`) : null,
      lines.length ? table(`${box.id}-lines`, `Lines of ${bill.month}`, cols, lines) : h('p', {}, 'No usage.'));
  }

  // -- bills of recent months ------------------------------------------------------------------
  const billsBox = h('div', { id: 'bills' });
  const monthInput = h('input', { type: 'month', name: 'month', value: thisMonth() });
  const monthBox = h('div', { id: 'month-bill' });
  const monthErr = errorBox();
  async function drawBills() {
    // Admins: every account's bill of the chosen month; others: their own of recent months.
    if (session.is_admin) {
      const doc = await api('GET', `/v1/bills?month=${enc(monthInput.value || thisMonth())}`);
      clear(billsBox, table('bills-table', 'Bills', [['Account', (x) => x.account_id], ['Month', (x) => x.month],
        ['Status', (x) => x.status], ['Total', (x) => money(x.total, x.currency)]], doc.items));
      return;
    }
    const docs = await Promise.all(monthsBack(6).map((m) => api('GET', `/v1/bills?month=${m}`)
      .then((d) => d.items).catch(() => [])));
    clear(billsBox, table('bills-table', 'Bills', [['Month', (x) => x.month], ['Status', (x) => x.status],
      ['Total', (x) => money(x.total, x.currency)], ['As of', (x) => x.as_of]], docs.flat()));
  }
  const showMonth = h('button', { type: 'button' }, 'Show bill');
  showMonth.addEventListener('click', async () => {
    monthErr.hide();
    try {
      await drawBill(monthBox, monthInput.value);
      if (session.is_admin) await drawBills();
    } catch (e) { clear(monthBox); monthErr.show(e); }
  });

  // -- usage of a period -----------------------------------------------------------------------
  const usageErr = errorBox();
  const today = new Date().toISOString().slice(0, 10);
  const start = h('input', { type: 'date', name: 'usage_start', value: `${thisMonth()}-01` });
  const end = h('input', { type: 'date', name: 'usage_end', value: today });
  const groupBy = h('select', { name: 'group_by' }, ['none', 'resource', 'usage_type', 'day'].map((g) =>
    h('option', { value: g, selected: g === 'usage_type' }, g === 'none' ? 'Line items' : g.replace('_', ' '))));
  const usageBox = h('div', { id: 'usage' });
  const runUsage = h('button', { type: 'submit' }, 'Show usage');
  const csv = h('button', { type: 'button' }, 'Download CSV');
  // Dates are whole UTC days: the end day is included (the API's end is exclusive).
  const period = () => {
    const q = { start: start.value, end: end.value, group_by: groupBy.value };
    if (end.value) q.end = new Date(Date.parse(`${end.value}T00:00:00Z`) + 86400000).toISOString().slice(0, 10);
    return new URLSearchParams(q);
  };
  const usageForm = h('form', { class: 'form', id: 'usage-form', 'aria-labelledby': 'u-h' },
    h('div', { class: 'inline' }, field('From', start), field('To (inclusive)', end), field('Group by', groupBy)),
    h('div', { class: 'actions' }, runUsage, csv), usageErr, usageBox);
  usageForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    usageErr.hide();
    runUsage.disabled = true;
    try {
      const doc = await api('GET', withAcct(`/v1/usage?${period()}`));
      clear(usageBox, h('p', { class: 'cost' }, 'Total: ', h('strong', { class: 'usage-total' }, money(doc.total, doc.currency)),
        ` (${doc.start} to ${doc.end})`),
      doc.items.length ? table('usage-table', 'Usage', USAGE_COLS[doc.group_by], doc.items) : h('p', {}, 'No usage.'));
    } catch (e) { clear(usageBox); usageErr.show(e); } finally { runUsage.disabled = false; }
  });
  csv.addEventListener('click', async () => {
    usageErr.hide();
    const q = period();
    q.set('format', 'csv');
    try {
      await downloadCsv(withAcct(`/v1/usage?${q}`), `usage-${start.value}-${end.value}-${groupBy.value}.csv`);
    } catch (e) { usageErr.show(e); }
  });

  // -- budget ----------------------------------------------------------------------------------
  const budgetErr = errorBox();
  const budgetNow = h('p', { id: 'budget-now', 'aria-live': 'polite' });
  const limit = h('input', { name: 'monthly_limit', inputmode: 'decimal', autocomplete: 'off' });
  const saveBudget = h('button', { type: 'submit' }, 'Set budget');
  const removeBudget = h('button', { type: 'button', class: 'danger' }, 'Remove budget');
  const budgetForm = h('form', { class: 'inline', id: 'budget-form' },
    field('Monthly limit (USD)', limit), saveBudget, removeBudget);
  async function drawBudget() {
    try {
      const b = await api('GET', withAcct('/v1/budget'));
      clear(budgetNow, `Monthly limit: ${money(b.monthly_limit)} (set ${b.updated_at})`);
      removeBudget.hidden = false;
    } catch (e) {
      if (e.code !== 'BudgetNotFound') throw e;
      clear(budgetNow, 'No budget set.');
      removeBudget.hidden = true;
    }
  }
  budgetForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    budgetErr.hide();
    const body = { monthly_limit: limit.value.trim() };
    if (acctQ()) body.account_id = account.value;
    try { await api('PUT', '/v1/budget', body); await drawBudget(); await drawBill(openBox, thisMonth()); } catch (e) { budgetErr.show(e); }
  });
  removeBudget.addEventListener('click', async () => {
    budgetErr.hide();
    try { await api('DELETE', withAcct('/v1/budget')); await drawBudget(); await drawBill(openBox, thisMonth()); } catch (e) { budgetErr.show(e); }
  });

  const section = (id, title, ...content) => h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...content);
  clear(root, h('h1', {}, 'Billing'), err, accountField,
    section('ob-h', 'This month so far', field('Group lines by', grouping), openBox),
    section('b-h', 'Bills', h('div', { class: 'inline' }, field('Bill month', monthInput), showMonth), monthErr, billsBox, monthBox),
    section('u-h', 'Usage', usageForm),
    section('bu-h', 'Budget', budgetNow, budgetErr, budgetForm));

  async function drawAll() {
    await Promise.all([drawBill(openBox, thisMonth()), drawBills(), drawBudget()]);
  }
  const redraw = async () => { err.hide(); clear(monthBox); try { await drawAll(); } catch (e) { err.show(e); } };
  account.addEventListener('change', redraw);
  grouping.addEventListener('change', redraw);
  // The open bill is an estimate to date: refreshed while the page is shown.
  await pg.every(30000, async () => {
    try { await drawAll(); err.hide(); } catch (e) { err.show(e); }
  });
}
