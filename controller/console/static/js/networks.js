// Placeholder: this area's pages are being built (issue 15).
import { clear, h } from './dom.js';

export async function vpcsPage(root) { clear(root, h('h1', {}, 'vpcsPage')); }
export async function vpcPage(root) { clear(root, h('h1', {}, 'vpcPage')); }
export async function subnetsPage(root) { clear(root, h('h1', {}, 'subnetsPage')); }
export async function routeTablesPage(root) { clear(root, h('h1', {}, 'routeTablesPage')); }
export async function routeTablePage(root) { clear(root, h('h1', {}, 'routeTablePage')); }
export async function gatewaysPage(root) { clear(root, h('h1', {}, 'gatewaysPage')); }
export async function elasticIpsPage(root) { clear(root, h('h1', {}, 'elasticIpsPage')); }
