// DOM helpers. Every piece of text (names, tags, descriptions, console output, error messages)
// goes in as a text node or textContent, never as HTML: nothing user-supplied can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A link to a console page; ids are encoded, so an id can never change the URL's meaning.
export function link(path, ...children) {
  return h('a', { href: '#' + path.split('/').map(encodeURIComponent).join('/') }, ...children);
}

let uid = 0;
// A labelled form control: <label for> + the control, in a .field div.
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++uid}`;
  const parts = [h('label', { for: control.id }, label), control];
  if (hint) {
    const hintEl = h('span', { class: 'hint', id: `${control.id}-hint` }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    parts.push(hintEl);
  }
  return h('div', { class: 'field' }, parts);
}

// The API's refusal, verbatim: "<message>" with its code, in an alert region.
export function errorBox() {
  const box = h('div', { class: 'error', role: 'alert', hidden: true });
  box.show = (err) => {
    clear(box, h('strong', {}, err.code || 'Error'), ': ', h('span', { class: 'msg' }, err.message || String(err)));
    box.hidden = false;
  };
  box.hide = () => { box.hidden = true; box.replaceChildren(); };
  return box;
}

export function nameOf(item) {
  return (item.tags && item.tags.Name) || '';
}

// The API's money is a decimal string ("0.0104"): shown as it came, never rounded by a float.
export function money(amount, currency = 'USD') {
  return `${amount} ${currency}`;
}
