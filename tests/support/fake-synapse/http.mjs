#!/usr/bin/env node
/*
 * The HTTP face of the fake Synapse in charm tests: `start <port>` execs this
 * on 127.0.0.1:<port>. GET /health answers 200 "OK" (as synapse/rest/health.py)
 * unless $SYNAPSE_DATA_DIR/fake-unhealthy exists (then 503, for the Pebble
 * check and the charm's own probe); GET /_matrix/federation/v1/version answers
 * {"server": {"name": "Synapse", "version": "1.163.2-fake"}}.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const port = Number(process.argv[2]);
const dataDir = process.env.SYNAPSE_DATA_DIR ?? '/data';
const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    const sick = fs.existsSync(path.join(dataDir, 'fake-unhealthy'));
    res.writeHead(sick ? 503 : 200, { 'content-type': 'text/plain' });
    return res.end(sick ? 'unhealthy' : 'OK');
  }
  if (req.url === '/_matrix/federation/v1/version') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ server: { name: 'Synapse', version: '1.163.2-fake' } }));
  }
  res.writeHead(404);
  res.end();
});
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
// In a pod, Pebble dying takes the container and its services with it. Here a Pebble
// killed by a fault case would leave this server orphaned, holding the port the
// restarted Pebble's own service needs: end with the parent, as the container would.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 200).unref();
