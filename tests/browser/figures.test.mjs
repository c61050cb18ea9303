// Figures fit for a write-up: in every figure `analyze --figures` writes (the page draws the same
// pictures, byte for byte; the permutation-null histograms included), no text is clipped by the
// canvas and no two texts overlap, at 12 and at 24 personas with the study's long persona names.
// Text boxes are measured by Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { launch } from './harness.mjs';

const BIN = process.env.PG_BIN;
const WORK = fs.mkdtempSync(path.join(process.env.PG_WORK || '/tmp', 'pg-figures-'));
let browser;

function pg(...args) {
  return execFileSync(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120000 }).toString();
}

function figures(personas) {
  const dir = path.join(WORK, `p${personas}`);
  const full = path.join(dir, 'full.pgb');
  fs.mkdirSync(dir, { recursive: true });
  pg('synth', '-o', full, '--personas', String(personas), '--questions', '30', '--hidden', '64',
    '--layers', '3,5', '--compression', '0.3', '--rotation', '0.3', '--seed', '5');
  pg('compact', full, '-o', path.join(dir, 'c.pgb'), '--components', '16');
  pg('analyze', path.join(dir, 'c.pgb'), '--out', path.join(dir, 'report'), '--permutations', '99',
    '--bootstrap', '99', '--m3-label-permutations', '19', '--figures');
  const figDir = path.join(dir, 'report', 'figures');
  return fs.readdirSync(figDir).filter((f) => f.endsWith('.svg')).map((f) => [f, fs.readFileSync(path.join(figDir, f), 'utf8')]);
}

before(async () => {
  assert.ok(BIN, 'PG_BIN must point at the persona-geometry binary');
  browser = await launch();
});
after(async () => { await browser?.close(); });

/** Text boxes (screen coordinates, transforms applied) of an SVG drawn at its own size. */
async function textProblems(page, svg) {
  await page.setContent(`<!DOCTYPE html><html><body style="margin:0">${svg}</body></html>`);
  return page.evaluate(() => {
    const root = document.querySelector('svg');
    const frame = root.getBoundingClientRect();
    const boxes = [...root.querySelectorAll('text')]
      .filter((t) => t.textContent.trim() !== '')
      .map((t) => ({ text: t.textContent.trim(), r: t.getBoundingClientRect() }));
    const problems = [];
    const slack = 0.5;
    for (const b of boxes) {
      if (b.r.left < frame.left - slack || b.r.right > frame.right + slack
        || b.r.top < frame.top - slack || b.r.bottom > frame.bottom + slack) {
        problems.push(`clipped: "${b.text}"`);
      }
    }
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i].r;
        const b = boxes[j].r;
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        // Glyph boxes include line spacing: count an overlap of more than 1.5 px both ways.
        if (w > 1.5 && h > 1.5) problems.push(`overlap: "${boxes[i].text}" / "${boxes[j].text}"`);
      }
    }
    return problems;
  });
}

for (const personas of [12, 24]) {
  test(`no clipped or overlapping text in any figure at ${personas} personas`, async () => {
    const page = await browser.newPage();
    const all = [];
    const figs = figures(personas);
    assert.ok(figs.length >= 10, `${figs.length} figures`);
    // The permutation-null histograms are among them (M1 raw and centred, M2, M3 x 2, LDA).
    for (const stem of ['null-of-delta-m1-raw', 'null-of-delta-m1-centred', 'null-of-delta-m2-em-axis',
      'null-of-delta-m3-accuracy', 'null-of-delta-m3-log-posterior', 'lda-accuracy-of']) {
      assert.ok(figs.some(([name]) => name.startsWith(stem)), `no ${stem}* figure`);
    }
    for (const [name, svg] of figs) {
      for (const p of await textProblems(page, svg)) all.push(`${name}: ${p}`);
    }
    await page.close();
    assert.deepEqual(all, [], `${all.length} problems:\n${all.join('\n')}`);
  });
}

test('no clipped or overlapping text in the training loss figure', async () => {
  // `train` on the training oracle's fixture (two steps suffice for a curve; ten give the
  // oracle's full record).
  const fx = path.resolve('../shared/fixtures');
  const out = path.join(WORK, 'train');
  pg('train', '--model-id', 'persona-fixture/tiny-qwen2', '--model-path', path.join(fx, 'hf-tiny-qwen2/model'),
    '--data', path.join(fx, 'lora-train/train.jsonl'), '--out', out, '--r', '2', '--micro-batch', '4',
    '--grad-accum', '1', '--no-shuffle');
  const svg = fs.readFileSync(path.join(out, 'loss.svg'), 'utf8');
  const page = await browser.newPage();
  const problems = await textProblems(page, svg);
  await page.close();
  assert.deepEqual(problems, [], problems.join('\n'));
  assert.match(svg, /<desc>[^<]*lr 0\.0001, seed 42\.[^<]*<\/desc>/);
});
