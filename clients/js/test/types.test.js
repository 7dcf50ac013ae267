'use strict';
// lib/index.d.ts compiles, strictly, against a use of every call (test/types/usage.ts), and would fail to if a
// declaration went missing or changed shape.

const assert = require('assert');
const { spawnSync } = require('child_process');
const path = require('path');

describe('TypeScript declarations', function () {
  it('type-check a use of the whole API', function () {
    const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc');
    const usage = path.join(__dirname, 'types', 'usage.ts');
    const run = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--esModuleInterop', '--module', 'commonjs', '--target', 'es2020', '--types', 'node', usage], { encoding: 'utf8' });
    assert.strictEqual(run.status, 0, run.stdout + run.stderr);
  });

  it('and fail on a misuse', function () {
    const tsc = path.join(__dirname, '..', 'node_modules', 'typescript', 'bin', 'tsc');
    const fs = require('fs');
    const os = require('os');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgcls-types-'));
    const bad = path.join(dir, 'bad.ts');
    fs.writeFileSync(bad, `import { Client } from ${JSON.stringify(path.join(__dirname, '..'))};\nnew Client('x').classify(Buffer.from(''), { topK: 'three' });\n`);
    const run = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--module', 'commonjs', '--target', 'es2020', '--types', 'node', bad], { encoding: 'utf8' });
    fs.rmSync(dir, { recursive: true, force: true });
    assert.notStrictEqual(run.status, 0);
    assert.ok(/bad.ts\(2,45\): error TS2322: Type 'string' is not assignable to type 'number'/.test(run.stdout), run.stdout);
  });
});
