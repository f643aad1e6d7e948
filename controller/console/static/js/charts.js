// Metric charts for the instance page: CloudWatch-style statistics from GET /v1/metrics/statistics
// drawn with uPlot (vendored, pinned: controller/console/vendor.json). Each chart also says its
// latest value in text (screen readers, and the tests), and shows "No data yet" until the agent's
// first samples arrive.
import uPlot from '../vendor/uplot-1.6.32/uPlot.esm.js';
import { api } from './api.js';
import { clear, h } from './dom.js';

const WINDOW_S = 3600;   // the last hour
const PERIOD_S = 60;     // one point a minute

async function statistics(instanceId, metric, statistic) {
  const end = new Date();
  const start = new Date(end.getTime() - WINDOW_S * 1000);
  const q = new URLSearchParams({
    namespace: 'Kumo/EC2', metric_name: metric, dimension: `InstanceId=${instanceId}`,
    start_time: start.toISOString(), end_time: end.toISOString(), period: String(PERIOD_S),
    statistics: statistic,
  });
  const doc = await api('GET', `/v1/metrics/statistics?${q}`);
  return doc.datapoints.map((d) => [Date.parse(d.timestamp) / 1000, d[statistic]]);
}

function bytes(v) {
  if (v === null || v === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// One chart: `lines` is [{metric, statistic, label, stroke}], all on one axis formatted by `fmt`.
function chart(id, title, lines, fmt) {
  const plotBox = h('div', { class: 'chart-plot', 'aria-hidden': 'true' });
  const summary = h('p', { class: 'chart-summary', id: `${id}-summary` }, 'No data yet');
  const box = h('figure', { class: 'chart', id, 'aria-labelledby': `${id}-title` },
    h('figcaption', { id: `${id}-title` }, title), plotBox, summary);
  let plot = null;
  async function update(instanceId) {
    const series = await Promise.all(lines.map((l) => statistics(instanceId, l.metric, l.statistic)));
    const xs = [...new Set(series.flat().map(([t]) => t))].sort((a, b) => a - b);
    if (!xs.length) { clear(summary, 'No data yet'); return; }
    const data = [xs, ...series.map((s) => {
      const at = new Map(s);
      return xs.map((t) => (at.has(t) ? at.get(t) : null));
    })];
    clear(summary, lines.map((l, i) => {
      const last = [...data[i + 1]].reverse().find((v) => v !== null);
      return `${l.label}: ${fmt(last)}`;
    }).join(' · ') + ` (last minute's ${lines[0].statistic.toLowerCase()})`);
    const width = Math.max(plotBox.clientWidth || box.clientWidth || 300, 240);
    if (plot && plot.width !== width) { plot.destroy(); plot = null; }
    if (!plot) {
      plot = new uPlot({
        width, height: 180,
        series: [{}, ...lines.map((l) => ({ label: l.label, stroke: l.stroke, width: 2,
          value: (u, v) => fmt(v) }))],
        axes: [{}, { values: (u, vals) => vals.map(fmt), size: 70 }],
        legend: { show: true },
      }, data, plotBox);
    } else {
      plot.setData(data);
    }
  }
  return { box, update };
}

// The instance page's Monitoring section: CPU utilization and network traffic, last hour.
export function monitoring(instanceId) {
  const cpu = chart('chart-cpu', 'CPU utilization (%)',
    [{ metric: 'CPUUtilization', statistic: 'Average', label: 'CPU', stroke: '#0b5cad' }],
    (v) => (v === null || v === undefined ? '–' : `${v.toFixed(1)} %`));
  const net = chart('chart-network', 'Network (bytes per minute)',
    [{ metric: 'NetworkIn', statistic: 'Sum', label: 'In', stroke: '#1a7f37' },
      { metric: 'NetworkOut', statistic: 'Sum', label: 'Out', stroke: '#b35900' }], bytes);
  const section = h('section', { 'aria-labelledby': 'm-h' },
    h('h2', { id: 'm-h' }, 'Monitoring (last hour)'), cpu.box, net.box);
  async function refresh() {
    await Promise.all([cpu.update(instanceId), net.update(instanceId)]);
  }
  return { section, refresh };
}
