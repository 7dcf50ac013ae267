'use strict';
// Config node: one imgcls-client channel per server, shared by every classification node that uses it,
// and closed on redeploy once the requests in flight are answered.

const fs = require('fs');
const { Client } = require('imgcls-client');

// Reconnect soon after a server restart (grpc-js backs off up to 120 s by default).
const CHANNEL_OPTIONS = { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 2000 };

function readPem(file, what) {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`imgcls-server: cannot read the ${what} ${file}: ${err.message}`);
  }
}

module.exports = function register(RED) {
  function ImgclsServerNode(config) {
    RED.nodes.createNode(this, config);
    this.address = (config.address || '').trim() || '127.0.0.1:50051';
    this.timeoutMs = Number(config.timeout) > 0 ? Number(config.timeout) * 1000 : 60000;
    this.inFlight = new Set();
    this.client = null;
    this.setupError = null;
    try {
      const cert = readPem(config.certFile, 'client certificate');
      const key = readPem(config.keyFile, 'client key');
      if (Boolean(cert) !== Boolean(key)) throw new Error('imgcls-server: mTLS needs both a client certificate and its key');
      this.client = new Client(this.address, {
        timeoutMs: this.timeoutMs,
        token: (this.credentials && this.credentials.token) || undefined,
        tls: Boolean(config.tls),
        rootCertificates: readPem(config.caFile, 'CA certificate'),
        clientCert: cert ? { cert, key } : undefined,
        channelOptions: CHANNEL_OPTIONS,
        // A message that arrives while the server restarts waits for it (up to the timeout) instead of failing.
        waitForReady: true,
      });
    } catch (err) {
      this.setupError = err;
      this.error(err.message);
    }

    // Runs a call on the shared channel, tracked so that close waits for it.
    this.run = (call) => {
      if (this.setupError) return Promise.reject(this.setupError);
      const promise = Promise.resolve().then(() => call(this.client));
      const tracked = promise.then(() => undefined, () => undefined);
      this.inFlight.add(tracked);
      tracked.then(() => this.inFlight.delete(tracked));
      return promise;
    };

    this.on('close', (done) => {
      Promise.all([...this.inFlight]).then(() => {
        if (this.client) this.client.close();
        done();
      });
    });
  }

  RED.nodes.registerType('imgcls-server', ImgclsServerNode, { credentials: { token: { type: 'password' } } });
};
