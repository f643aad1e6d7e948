// Placeholder: this area's pages are being built (issue 15).
import { clear, h } from './dom.js';

export async function hostsPage(root) { clear(root, h('h1', {}, 'hostsPage')); }
export async function accountsPage(root) { clear(root, h('h1', {}, 'accountsPage')); }
export async function instanceTypesPage(root) { clear(root, h('h1', {}, 'instanceTypesPage')); }
