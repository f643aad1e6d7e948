// Placeholder: this area's pages are being built (issue 15).
import { clear, h } from './dom.js';

export async function scalingGroupsPage(root) { clear(root, h('h1', {}, 'scalingGroupsPage')); }
export async function scalingGroupPage(root) { clear(root, h('h1', {}, 'scalingGroupPage')); }
