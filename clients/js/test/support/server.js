'use strict';
// A real imgcls server in a child process, as tests/support/serve_process.py starts it: port 0, the port read
// back from its start-up line, IMGCLS_* / HF_* variables of the runner left out. Shared by both packages' tests.

const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const SHARED = process.env.IMGCLS_SHARED || path.resolve(REPO, '..', 'shared');
const PYTHON = process.env.IMGCLS_PYTHON || path.join(REPO, '.venv', 'bin', 'python');
const SERVING_ON = /imgcls serving on 127\.0\.0\.1:(\d+) /;

function childEnv() {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^(IMGCLS_|HF_|HUGGING_FACE_)/.test(key)) env[key] = value;
  }
  return env;
}

class ServeProcess {
  constructor(...args) {
    this.args = args;
    this.port = 0;
    this.child = null;
    this.log = '';
  }

  get target() {
    return `127.0.0.1:${this.port}`;
  }

  /** Start on `port` (0: a free one); resolves once the start-up line is printed, rejects with the log if it exits. */
  start(port = 0, timeoutMs = 120000) {
    const command = ['-m', 'imgcls.cli', 'serve', '--host', '127.0.0.1', '--http-port', '0', '--port', String(port), ...this.args];
    this.log = '';
    const child = spawn(PYTHON, command, { cwd: REPO, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`imgcls serve never started:\n${this.log.slice(-3000)}`)); }, timeoutMs);
      const onData = (chunk) => {
        this.log += chunk.toString();
        const found = SERVING_ON.exec(this.log);
        if (found && !this.port) {
          this.port = Number(found[1]);
          clearTimeout(timer);
          resolve(this);
        } else if (found && this.port === Number(found[1])) {
          clearTimeout(timer);
          resolve(this);
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`imgcls serve exited ${code}:\n${this.log.slice(-3000)}`));
      });
    });
  }

  /** Start again on the same port (just freed by stop); a few tries while the port is briefly taken. */
  async restart(tries = 5) {
    let last;
    for (let i = 0; i < tries; i++) {
      try {
        return await this.start(this.port);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  /** SIGTERM and wait for the exit. */
  stop() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.removeAllListeners('exit');
      child.on('exit', () => resolve());
      child.kill('SIGTERM');
    });
  }
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'imgcls-js-'));
}

module.exports = { ServeProcess, REPO, SHARED, PYTHON, tempDir, IMAGES: path.join(SHARED, 'images'), MODELS: path.join(SHARED, 'models') };
