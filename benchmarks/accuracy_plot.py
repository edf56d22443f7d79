"""An SVG scatter plot of accuracy against trainable parameters (log scale), one panel per task.

Pure Python (no plotting library): `svg(results)` takes the rows a benchmark
prints ({'task', 'method', 'trainable', 'accuracy', 'majority'}) and returns
the SVG text, which a README shows as an image.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

PANEL_W, PANEL_H = 420, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 40, 50
COLORS = {'prompt': '#1f77b4', 'peft': '#ff7f0e', 'prefix': '#2ca02c', 'full': '#d62728',
          'deep': '#9467bd'}
LEGEND = [('prompt tuning (circle P=20, square P=100)', 'prompt'), ('peft prompt tuning', 'peft'),
          ('prefix tuning', 'prefix'), ('full model tuning', 'full')]


def _family(method: str) -> str:
  if method.startswith('peft'):
    return 'peft'
  if method.startswith('prefix'):
    return 'prefix'
  if method.startswith('full'):
    return 'full'
  if method.startswith('deep'):
    return 'deep'
  return 'prompt'


def _esc(text: str) -> str:
  return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def svg(results: Sequence[Dict], title: str = '', *, y_label: str = 'validation accuracy %',
        x_label: str = 'trainable parameters (log scale)', baseline: str = 'majority class',
        legend: Sequence[Tuple[str, str]] = tuple(LEGEND), y_floor: float = -math.inf) -> str:
  """The plot: x = `trainable` (log10), y = `accuracy`, the `majority` baseline dashed.

  Other scores plot the same way under other labels (`y_label`, `x_label`, `baseline`),
  with `legend` as (label, family) pairs; the y axis starts no lower than `y_floor`.
  """
  tasks: List[str] = []
  for r in results:
    if r['task'] not in tasks:
      tasks.append(r['task'])
  points = [r for r in results if r.get('trainable')]
  if not points:
    raise ValueError('no rows with trainable parameters to plot')
  lo = math.floor(math.log10(min(r['trainable'] for r in points)))
  hi = math.ceil(math.log10(max(r['trainable'] for r in points)))
  hi = max(hi, lo + 1)
  width = PANEL_W * len(tasks)
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H + 40}" '
         f'font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{PANEL_H + 40}" fill="white"/>',
         f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>']
  for i, task in enumerate(tasks):
    rows = [r for r in results if r['task'] == task]
    accs = [r['accuracy'] for r in rows] + [r['majority'] for r in rows]
    y_lo = max(5 * math.floor(min(accs) / 5 - 0.2), y_floor)
    y_hi = 5 * math.ceil(max(accs) / 5 + 0.2)
    x0, y0 = i * PANEL_W + LEFT, TOP + 10
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM + 20
    x = lambda n: x0 + w * (math.log10(n) - lo) / (hi - lo)
    y = lambda a: y0 + h * (1 - (a - y_lo) / (y_hi - y_lo))
    out.append(f'<text x="{x0 + w / 2}" y="{y0 - 8}" text-anchor="middle" '
               f'font-weight="bold">{_esc(task)}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
    for e in range(lo, hi + 1):
      out.append(f'<line x1="{x(10 ** e)}" y1="{y0 + h}" x2="{x(10 ** e)}" y2="{y0 + h + 4}" '
                 f'stroke="#444"/><text x="{x(10 ** e)}" y="{y0 + h + 16}" '
                 f'text-anchor="middle">1e{e}</text>')
    for a in range(int(y_lo), int(y_hi) + 1, 5):
      out.append(f'<line x1="{x0 - 4}" y1="{y(a)}" x2="{x0}" y2="{y(a)}" stroke="#444"/>'
                 f'<text x="{x0 - 6}" y="{y(a) + 4}" text-anchor="end">{a}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle">'
               f'{_esc(x_label)}</text>')
    out.append(f'<text x="{x0 - 40}" y="{y0 + h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 - 40} {y0 + h / 2})">{_esc(y_label)}</text>')
    majority = rows[0]['majority']
    out.append(f'<line x1="{x0}" y1="{y(majority)}" x2="{x0 + w}" y2="{y(majority)}" '
               f'stroke="#888" stroke-dasharray="5,4"/><text x="{x0 + w - 4}" '
               f'y="{y(majority) - 4}" text-anchor="end" fill="#666">{_esc(baseline)} '
               f'{majority:.1f}</text>')
    for r in rows:
      if not r.get('trainable'):
        continue
      color = COLORS[_family(r['method'])]
      shape = ('<rect x="{cx}" y="{cy}" width="8" height="8" fill="{c}" fill-opacity="0.8"/>'
               if 'P=100' in r['method'] else
               '<circle cx="{cx}" cy="{cy}" r="4.5" fill="{c}" fill-opacity="0.8"/>')
      cx, cy = x(r['trainable']), y(r['accuracy'])
      if 'P=100' in r['method']:
        cx, cy = cx - 4, cy - 4
      out.append(shape.format(cx=f'{cx:.1f}', cy=f'{cy:.1f}', c=color) +
                 f'<title>{_esc(r["method"])}: {r["accuracy"]:.1f}%</title>')
  for k, (label, family) in enumerate(legend):
    lx = 20 + k * (width - 40) / len(legend)
    out.append(f'<circle cx="{lx}" cy="{PANEL_H + 22}" r="4.5" fill="{COLORS[family]}"/>'
               f'<text x="{lx + 8}" y="{PANEL_H + 26}">{_esc(label)}</text>')
  out.append('</svg>')
  return '\n'.join(out) + '\n'
