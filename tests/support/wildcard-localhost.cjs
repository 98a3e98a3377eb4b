/**
 * Preloaded into the CLI or the charm (NODE_OPTIONS=--require <this file>) by
 * tests that need a name whose subdomains resolve, as a store reached by a
 * wildcard DNS name has, offline: glibc here resolves `localhost` but not
 * `<bucket>.localhost` (no nss-myhostname), and editing /etc/hosts would touch
 * the whole machine. Only dns.lookup (what Node's net and so the AWS SDK use)
 * changes, and only for names ending in `.localhost`, which RFC 6761 reserves
 * for loopback: they resolve as `localhost` does. Every request still goes to
 * the real server, with its Host header as the client wrote it.
 */
'use strict';
const dns = require('node:dns');

const lookup = dns.lookup;
dns.lookup = function wildcardLocalhost(hostname, options, callback) {
  const name =
    typeof hostname === 'string' && /\.localhost\.?$/i.test(hostname) ? 'localhost' : hostname;
  return lookup.call(dns, name, options, callback);
};
