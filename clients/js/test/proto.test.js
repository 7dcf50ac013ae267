'use strict';
// The package ships the repository's own contract: the .proto files it loads are the repo's, byte for byte.

const assert = require('assert');
const fs = require('fs');
const path = require('path');
const { PROTO_DIR } = require('..');

const REPO_PROTO = path.resolve(__dirname, '..', '..', '..', 'proto', 'imgcls', 'v1');

describe('shipped proto', function () {
  it('equals the repository\'s proto/imgcls/v1 (run scripts/sync-proto.js after changing it)', function () {
    const names = fs.readdirSync(REPO_PROTO).filter((n) => n.endsWith('.proto')).sort();
    assert.ok(names.length > 0);
    assert.deepStrictEqual(fs.readdirSync(path.join(PROTO_DIR, 'imgcls', 'v1')).filter((n) => n.endsWith('.proto')).sort(), names);
    for (const name of names) {
      const shipped = fs.readFileSync(path.join(PROTO_DIR, 'imgcls', 'v1', name), 'utf8');
      assert.strictEqual(shipped, fs.readFileSync(path.join(REPO_PROTO, name), 'utf8'), `${name} differs`);
    }
  });

  it('is in the package\'s published files', function () {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
    assert.ok(pkg.files.includes('proto/') && pkg.files.includes('lib/'));
    assert.ok(fs.existsSync(path.join(__dirname, '..', pkg.types)), `${pkg.types} is missing`);
  });
});
