// The published site under a sub-path (https://host/site/, as on GitHub Pages) and a host that
// lost a file: the page works in the first case and says why it cannot in the second.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, serve } from './harness.mjs';

const DIST = process.env.PG_DIST || 'dist';
let browser;
const servers = [];

before(async () => { browser = await launch(); });
after(async () => {
  await browser?.close();
  // Close every server even when a test failed half-way (an open one keeps node running).
  for (const s of servers) { s.closeAllConnections?.(); s.close(); }
});

async function site(options) {
  const server = await serve(DIST, {}, options);
  servers.push(server);
  return server;
}

test('the site works under a sub-path (every asset URL is relative)', async () => {
  const server = await site({ prefix: '/site' });
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  const errors = [];
  const failed = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('response', (r) => { if (r.status() >= 400) failed.push(r.url()); });
  await page.goto(`${server.url}/site/?n=200`);
  await page.waitForFunction(() => window.__pg && window.__pg.first_figure_ms, null, { timeout: 60000 });
  assert.match(await page.locator('#prov-model').innerText(), /SmolLM2-135M-Instruct/);
  assert.equal(await page.locator('#load-error').count(), 0);
  assert.deepEqual(failed.filter((u) => !u.endsWith('/favicon.ico')), []);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a missing wasm file gives a readable message, not a blank page', async () => {
  const server = await site({ prefix: '/site', missing: ['/explorer_bg.wasm'] });
  const page = await browser.newPage();
  await page.goto(`${server.url}/site/`);
  await page.waitForSelector('#load-error', { timeout: 30000 });
  const text = await page.locator('#load-error').innerText();
  assert.match(text, /could not start/);
  assert.match(text, /every file of dist\//);
  await page.close();
});
