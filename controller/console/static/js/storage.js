// Placeholder: this area's pages are being built (issue 15).
import { clear, h } from './dom.js';

export async function volumesPage(root) { clear(root, h('h1', {}, 'volumesPage')); }
export async function volumePage(root) { clear(root, h('h1', {}, 'volumePage')); }
export async function snapshotsPage(root) { clear(root, h('h1', {}, 'snapshotsPage')); }
export async function imagesPage(root) { clear(root, h('h1', {}, 'imagesPage')); }
export async function imagePage(root) { clear(root, h('h1', {}, 'imagePage')); }
