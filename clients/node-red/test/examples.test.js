'use strict';
// The package's example flow (examples/imgcls-classification.json, offered by the editor's Import > Examples), run
// whole in a real Node-RED runtime with its core nodes: inject, file in, change and catch; its debug nodes swapped
// for helper nodes to read what they would show, its /data/ image paths for the shared images.

const assert = require('assert');
const fs = require('fs');
const path = require('path');
const helper = require('node-red-node-test-helper');
const { ServeProcess, IMAGES } = require('../../js/test/support/server');
const { pythonLabels } = require('../../js/test/support/python');

helper.init(require.resolve('node-red'));

const CORE = path.dirname(require.resolve('@node-red/nodes/package.json'));
const core = (file) => require(path.join(CORE, 'core', file));
const NODES = [
  require('../nodes/imgcls-server.js'),
  require('../nodes/imgcls-classification.js'),
  core('common/20-inject.js'),
  core('common/25-catch.js'),
  core('storage/10-file.js'),
  core('function/15-change.js'),
  core('common/90-comment.js'),
];
const EXAMPLE = path.join(__dirname, '..', 'examples', 'imgcls-classification.json');

function readmeFlow() {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const start = readme.indexOf('```json\n') + '```json\n'.length;
  return readme.slice(start, readme.indexOf('```', start));
}

function localised(target, text = fs.readFileSync(EXAMPLE, 'utf8')) {
  text = text.replaceAll('/data/', `${IMAGES}/`);
  return JSON.parse(text).map((n) => {
    if (n.type === 'imgcls-server') return { ...n, address: target };
    if (n.type === 'debug') return { id: n.id, z: n.z, type: 'helper' };
    return n;
  });
}

function nextMessage(node, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message at ${node.id}`)), timeoutMs);
    node.once('input', (msg) => { clearTimeout(timer); resolve(msg); });
  });
}

describe('the example flow', function () {
  const server = new ServeProcess();

  before(async function () {
    await server.start();
    await new Promise((resolve) => helper.startServer(resolve));
  });

  afterEach(async function () {
    await helper.unload();
  });

  after(async function () {
    await new Promise((resolve) => helper.stopServer(resolve));
    await server.stop();
  });

  it('uses only core nodes and this package\'s, on one tab, every classification node wired to a server', function () {
    const flow = JSON.parse(fs.readFileSync(EXAMPLE, 'utf8'));
    const types = new Set(flow.map((n) => n.type));
    assert.deepStrictEqual([...types].sort(), ['catch', 'change', 'comment', 'debug', 'file in', 'imgcls-classification', 'imgcls-server', 'inject', 'tab']);
    const servers = new Set(flow.filter((n) => n.type === 'imgcls-server').map((n) => n.id));
    for (const node of flow.filter((n) => n.type === 'imgcls-classification')) assert.ok(servers.has(node.server), node.id);
  });

  it('classifies a file, and two files as a batch with topK and threshold from the message, as the Python client', async function () {
    await helper.load(NODES, localised(server.target));
    const cat = path.join(IMAGES, 'cat.jpg');
    const coffee = path.join(IMAGES, 'coffee.jpg');

    let shown = nextMessage(helper.getNode('f1debug'));
    helper.getNode('f1inject').receive({});
    const expected3 = pythonLabels(server.target, [cat], { topK: 3 })[cat];
    assert.deepStrictEqual((await shown).payload, expected3);

    shown = nextMessage(helper.getNode('f1debug2'));
    helper.getNode('f1inject2').receive({});
    const expected = pythonLabels(server.target, [cat, coffee], { topK: 2, threshold: 0.05 });
    assert.deepStrictEqual((await shown).payload, [expected[cat], expected[coffee]]);
  });

  it('the README\'s flow, pasted: top 3 labels of a file', async function () {
    await helper.load(NODES, localised(server.target, readmeFlow()));
    const cat = path.join(IMAGES, 'cat.jpg');
    const shown = nextMessage(helper.getNode('dbg'));
    helper.getNode('in').receive({});
    assert.deepStrictEqual((await shown).payload, pythonLabels(server.target, [cat], { topK: 3 })[cat]);
  });

  it('its catch node gets the error of a classification that fails', async function () {
    const flow = localised(server.target).map((n) => (n.id === 'f1inject' ? { ...n, props: [{ p: 'filename', v: path.join(IMAGES, 'reference-open-nsfw.json'), vt: 'str' }] } : n));
    await helper.load(NODES, flow);
    const caught = nextMessage(helper.getNode('f1debug3'));
    helper.getNode('f1inject').receive({});
    const msg = await caught;
    assert.ok(/INVALID_ARGUMENT: inputs\[0\]/.test(msg.error.message), msg.error.message);
    assert.strictEqual(msg.error.source.id, 'f1classify');
  });
});
