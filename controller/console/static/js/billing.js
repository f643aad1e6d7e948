// Placeholder: this area's pages are being built (issue 15).
import { clear, h } from './dom.js';

export async function billingPage(root) { clear(root, h('h1', {}, 'billingPage')); }
