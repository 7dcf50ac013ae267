// Copies the repository's proto/imgcls/v1 into this package, which ships it (npm pack takes proto/):
// run after changing the contract; test/proto.test.js fails while the two differ.
'use strict';
const fs = require('fs');
const path = require('path');

const source = path.resolve(__dirname, '..', '..', '..', 'proto', 'imgcls', 'v1');
const target = path.resolve(__dirname, '..', 'proto', 'imgcls', 'v1');
fs.mkdirSync(target, { recursive: true });
for (const name of fs.readdirSync(source).filter((n) => n.endsWith('.proto'))) {
  fs.copyFileSync(path.join(source, name), path.join(target, name));
}
