// Accessibility and small screens: axe-core (npm, pinned) on the loaded page with zero serious
// or critical violations, and a 390 px wide phone layout without horizontal page scroll.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, serve } from './harness.mjs';

const DIST = process.env.PG_DIST || 'dist';
const AXE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules', 'axe-core', 'axe.min.js');
let browser, server;

before(async () => {
  browser = await launch();
  server = await serve(DIST);
});
after(async () => {
  await browser?.close();
  server?.closeAllConnections?.();
  server?.close();
});

async function openDefault(viewport) {
  const page = await browser.newPage({ viewport });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.errors = errors;
  await page.goto(`${server.url}/?n=200`);
  await page.waitForFunction(() => window.__pg && window.__pg.first_figure_ms, null, { timeout: 60000 });
  // Let the view on screen finish, so that tables and the verdict are on the page.
  await page.waitForSelector('#rows tbody tr', { timeout: 60000 });
  return page;
}

async function axeViolations(page) {
  await page.addScriptTag({ path: AXE });
  const results = await page.evaluate(async () => window.axe.run(document, { resultTypes: ['violations'] }));
  return results.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}, ${v.nodes.length} nodes): ${v.help}; e.g. ${v.nodes[0].target.join(' ')}`);
}

test('axe-core finds no serious or critical accessibility violation', async () => {
  const page = await openDefault({ width: 1500, height: 1000 });
  const v = await axeViolations(page);
  assert.deepEqual(v, [], v.join('\n'));
  // Every canvas has a text alternative and a data table behind it; every export button says
  // what it exports; progress is announced.
  const canvases = await page.$$eval('canvas', (cs) => cs.map((c) => [c.getAttribute('role'), c.getAttribute('aria-label')]));
  assert.ok(canvases.length > 0 && canvases.every(([r, l]) => r === 'img' && l && l.length > 3), JSON.stringify(canvases));
  const names = await page.$$eval('figure[data-state="drawn"] .export button', (bs) => bs.map((b) => b.getAttribute('aria-label') || b.textContent));
  assert.ok(names.length >= 20);
  assert.equal(new Set(names).size, names.length, `export buttons have distinct accessible names: ${names.join(' | ')}`);
  assert.ok(await page.locator('[aria-live]').count() > 0);
  assert.ok(await page.locator('figure table.data').count() > 0, 'figures carry their data as a table');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('at 390 px the page does not scroll sideways; tables scroll in their own containers', async () => {
  const page = await openDefault({ width: 390, height: 844 });
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth }));
  assert.ok(scroll <= client + 1, `page width ${scroll} px in a ${client} px viewport`);
  const v = await axeViolations(page);
  assert.deepEqual(v, [], v.join('\n'));
  await page.close();
});
