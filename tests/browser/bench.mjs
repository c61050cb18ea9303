// Explorer benchmark in headless Chromium on this machine: wasm sizes (raw, gzip), time from page
// open to the published verdict on screen (bundles with an embedded report) and to the first
// figure, and time to recompute one (method, layer) view with N permutations for all three
// metrics (Web Workers, one per core). Prints a JSON line.
// Usage: node tests/browser/bench.mjs DIST_DIR [N]
import { launch, serve } from './harness.mjs';
import fs from 'node:fs';
import zlib from 'node:zlib';
import path from 'node:path';

const dist = process.argv[2] || 'dist';
const n = Number(process.argv[3] || 10000);
const sizes = {};
for (const f of ['explorer_bg.wasm', 'worker_bg.wasm']) {
  const b = fs.readFileSync(path.join(dist, f));
  sizes[f] = { raw: b.length, gzip: zlib.gzipSync(b, { level: 9 }).length };
}
const server = await serve(dist);
const browser = await launch();
const results = { n, sizes, runs: [] };
try {
  for (let i = 0; i < 3; i++) {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
    const t0 = Date.now();
    await page.goto(`${server.url}/?n=${n}&seed=${i}`);
    await page.waitForFunction(() => window.__pg && window.__pg.first_figure_ms, null, { timeout: 60000 });
    const first = await page.evaluate(() => window.__pg.first_figure_ms);
    await page.waitForFunction(() => window.__pg && window.__pg.view_ms, null, { timeout: 600000 });
    const pg = await page.evaluate(() => window.__pg);
    results.runs.push({ published_ms: pg.published_ms ?? null, first_figure_ms: first, view_ms: pg.view_ms, workers: pg.workers, wall_ms: Date.now() - t0 });
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(results));
