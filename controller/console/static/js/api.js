// The console's only way to the controller: /console/api/session for signing in and out, and
// the same /v1 REST API the CLI uses, authenticated by the HttpOnly session cookie. Unsafe
// methods carry the session's CSRF token in X-CSRF-Token. Errors keep the API's code and
// message, so the console shows exactly what the API said.

let session = null;
const listeners = [];

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function currentSession() { return session; }
export function onSessionChange(fn) { listeners.push(fn); }
function setSession(s) { session = s; listeners.forEach((fn) => fn(s)); }

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && session) headers['X-CSRF-Token'] = session.csrf_token;
  let r;
  try {
    r = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'NetworkError', 'the controller did not answer');
  }
  if (r.status === 204) return null;
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) {
    const err = (doc && doc.error) || { code: 'HttpError', message: `HTTP ${r.status}` };
    if (r.status === 401 && session && !path.startsWith('/console/api/')) setSession(null);
    throw new ApiError(r.status, err.code, err.message);
  }
  return doc;
}

// Every item of a paged list (bounded: a console page never walks more than 20 pages).
export async function listAll(path, params = {}) {
  const items = [];
  let token = null;
  for (let i = 0; i < 20; i++) {
    const q = new URLSearchParams({ ...params, max_results: '1000' });
    if (token) q.set('next_token', token);
    const page = await api('GET', `${path}?${q}`);
    items.push(...page.items);
    token = page.next_token;
    if (!token) break;
  }
  return items;
}

export async function loadSession() {
  try {
    setSession(await api('GET', '/console/api/session'));
  } catch (e) {
    if (e.status !== 401) throw e;
    setSession(null);
  }
  return session;
}

export async function signIn(credentials) {
  setSession(await api('POST', '/console/api/session', credentials));
  return session;
}

export async function signOut() {
  try { await api('DELETE', '/console/api/session'); } finally { setSession(null); }
}
