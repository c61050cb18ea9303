// Shared by the browser tests and the benchmark: a static file server for dist/ and headless
// Chromium (Debian's /usr/bin/chromium) through playwright-core.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.pgb': 'application/octet-stream', '.json': 'application/json' };

/** Serves `root` (plus `extra` = {urlPath: filePath}) on 127.0.0.1 at a free port; with
 * `prefix` (e.g. '/site') only under that sub-path, as a static host publishing there would;
 * `missing` lists files answered 404; `delayMs` = {urlPath: ms} holds those answers back (a slow
 * network for one file). */
export function serve(root, extra = {}, { prefix = '', missing = [], delayMs = {} } = {}) {
  root = path.resolve(root);
  return new Promise((resolve) => {
    const server = http.createServer((req, res) => {
      let u = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      if (prefix) {
        if (!u.startsWith(prefix + '/')) { res.writeHead(404); res.end('outside the site'); return; }
        u = u.slice(prefix.length);
      }
      if (missing.includes(u)) { res.writeHead(404); res.end('not found'); return; }
      const file = extra[u] || path.join(root, u === '/' ? 'index.html' : path.normalize(u));
      if (!extra[u] && !file.startsWith(root + path.sep)) { res.writeHead(403); res.end(); return; }
      setTimeout(() => fs.stat(file, (err, st) => {
        if (err || !st.isFile()) { res.writeHead(404); res.end('not found'); return; }
        res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Content-Length': st.size });
        fs.createReadStream(file).pipe(res);
      }), delayMs[u] || 0);
    });
    server.listen(0, '127.0.0.1', () => {
      server.url = `http://127.0.0.1:${server.address().port}`;
      resolve(server);
    });
  });
}

export async function launch() {
  // Playwright starts Chromium with a fresh temporary profile (--user-data-dir) every launch.
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
