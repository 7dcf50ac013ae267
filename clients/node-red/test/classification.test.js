'use strict';
// The imgcls-classification node in a real Node-RED runtime (node-red-node-test-helper), against a real imgcls
// server started here, compared with the Python client's answers for the same images.

const assert = require('assert');
const fs = require('fs');
const path = require('path');
const helper = require('node-red-node-test-helper');
const serverNode = require('../nodes/imgcls-server.js');
const classificationNode = require('../nodes/imgcls-classification.js');
const { ServeProcess, IMAGES, MODELS, SHARED, tempDir } = require('../../js/test/support/server');
const { pythonLabels, pythonTensorLabels, decoded } = require('../../js/test/support/python');

helper.init(require.resolve('node-red'));

const CAT = path.join(IMAGES, 'cat.jpg');
const COFFEE = path.join(IMAGES, 'coffee.jpg');
const ROCKET = path.join(IMAGES, 'rocket.jpg');
const TOKEN = 'node-red-token-41f0';

// The FlowFuse node's documentation, with its example flow (../shared/node-red/image-classification-node.md).
const FLOWFUSE_DOC = path.join(SHARED, 'node-red', 'image-classification-node.md');

function exampleFlow() {
  const doc = fs.readFileSync(FLOWFUSE_DOC, 'utf8');
  const json = doc.slice(doc.indexOf('{% renderFlow'), doc.indexOf('{% endrenderFlow %}'));
  return JSON.parse(json.slice(json.indexOf('\n') + 1));
}

/** The served model folder for a ViT-style processor (size {height, width}): EfficientNet-Lite0's weights and labels. */
function vitLikeModel(dir) {
  const folder = path.join(dir, 'vit-base-patch16-224');
  fs.mkdirSync(path.join(folder, 'onnx'), { recursive: true });
  const source = path.join(MODELS, 'efficientnet-lite0');
  fs.copyFileSync(path.join(source, 'config.json'), path.join(folder, 'config.json'));
  fs.symlinkSync(path.join(source, 'onnx', 'model.onnx'), path.join(folder, 'onnx', 'model.onnx'));
  const processor = {
    image_processor_type: 'ViTImageProcessor',
    do_resize: true,
    size: { height: 224, width: 224 },
    resample: 2,
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: [0.5, 0.5, 0.5],
    image_std: [0.5, 0.5, 0.5],
  };
  fs.writeFileSync(path.join(folder, 'preprocessor_config.json'), JSON.stringify(processor));
  return folder;
}

function labelsOnly(predictions) {
  return predictions.map(({ label, score }) => ({ label, score }));
}

function assertSameLabels(actual, expected, tolerance = 1e-5) {
  assert.deepStrictEqual(actual.map((p) => p.label), expected.map((p) => p.label));
  actual.forEach((p, i) => assert.ok(Math.abs(p.score - expected[i].score) <= tolerance, `${p.label}: ${p.score} vs ${expected[i].score}`));
  actual.forEach((p) => assert.deepStrictEqual(Object.keys(p).sort(), ['label', 'score']));
}

/** The next message the helper node receives (rejects after timeoutMs). */
function nextMessage(node, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no message')), timeoutMs);
    node.once('input', (msg) => { clearTimeout(timer); resolve(msg); });
  });
}

/** The next node.error(err, msg) of node (what Catch nodes see). */
function nextError(node, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no error')), timeoutMs);
    node.once('call:error', (call) => { clearTimeout(timer); resolve({ error: call.args[0], msg: call.args[1] }); });
  });
}

async function until(condition, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function load(flow, credentials = {}) {
  return new Promise((resolve, reject) => {
    helper.load([serverNode, classificationNode], flow, credentials, (err) => (err ? reject(err) : resolve()));
  });
}

describe('imgcls-classification in Node-RED', function () {
  const dir = tempDir();
  const tokens = path.join(dir, 'tokens');
  fs.writeFileSync(tokens, `${TOKEN}\n`);
  const vit = vitLikeModel(dir);
  const shared = path.join(MODELS, 'efficientnet-lite0');
  // The model names of the FlowFuse example flows (repo ids select the served name after the slash).
  const server = new ServeProcess('--auth-token-file', tokens, '--model', `resnet-50-ONNX=${shared}`, '--model', `vit-base-patch16-224=${vit}`);
  let reference;

  before(async function () {
    await server.start();
    await new Promise((resolve) => helper.startServer(resolve));
    reference = pythonLabels(server.target, [CAT, COFFEE, ROCKET], { token: TOKEN });
  });

  afterEach(async function () {
    await helper.unload();
  });

  after(async function () {
    await new Promise((resolve) => helper.stopServer(resolve));
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function flow(nodeConfig = {}) {
    return [
      { id: 'srv', type: 'imgcls-server', address: server.target },
      { id: 'cls', type: 'imgcls-classification', server: 'srv', property: 'payload', propertyType: 'msg', model: '', topK: '5', topKType: 'num', threshold: '', thresholdType: 'num', wires: [['out']], ...nodeConfig },
      { id: 'out', type: 'helper' },
    ];
  }
  const credentials = { srv: { token: TOKEN } };

  it('every input kind: a Buffer, a base64 string, a Jimp image, a tensor {data, type, dim}', async function () {
    await load(flow(), credentials);
    const cls = helper.getNode('cls');
    const out = helper.getNode('out');
    const bytes = fs.readFileSync(CAT);
    const rgba = decoded(CAT, 'RGBA');
    const tensorDims = [1, 3, 224, 224];
    const tensor = { data: new Float32Array(3 * 224 * 224).fill(-0.5), type: 'float32', dim: tensorDims };
    const expectedTensor = pythonTensorLabels(server.target, tensorDims, -0.5, { token: TOKEN });

    for (const [payload, expected, tolerance] of [
      [bytes, reference[CAT], 1e-5],
      [bytes.toString('base64'), reference[CAT], 1e-5],
      [{ bitmap: { data: rgba.data, width: rgba.width, height: rgba.height } }, reference[CAT], 0.02],
      [tensor, expectedTensor, 1e-5],
    ]) {
      const answered = nextMessage(out);
      cls.receive({ payload, topic: 'kept' });
      const msg = await answered;
      assert.strictEqual(msg.topic, 'kept');
      assertSameLabels(msg.payload, expected, tolerance);
    }
    assert.deepStrictEqual(cls.status.lastCall.args[0].fill, 'green');
    assert.ok(/tabby|Egyptian cat|tiger cat/.test(cls.status.getCalls().at(-2).args[0].text));
  });

  it('an array of inputs as one batch: an array of label arrays, in order', async function () {
    await load(flow(), credentials);
    const out = helper.getNode('out');
    const answered = nextMessage(out);
    helper.getNode('cls').receive({ payload: [fs.readFileSync(CAT), fs.readFileSync(COFFEE).toString('base64'), fs.readFileSync(ROCKET)] });
    const msg = await answered;
    assert.strictEqual(msg.payload.length, 3);
    msg.payload.forEach((labels, i) => assertSameLabels(labels, reference[[CAT, COFFEE, ROCKET][i]]));
  });

  it('a tensor with a batch dimension of 2 is two images: one label array each, none dropped', async function () {
    await load(flow(), credentials);
    const out = helper.getNode('out');
    const row = 3 * 224 * 224;
    const data = new Float32Array(2 * row);
    data.fill(-0.5, 0, row);
    data.fill(0.25, row);
    const expected = [-0.5, 0.25].map((v) => pythonTensorLabels(server.target, [1, 3, 224, 224], v, { token: TOKEN }));
    assert.notDeepStrictEqual(expected[0].map((p) => p.label), expected[1].map((p) => p.label));
    const answered = nextMessage(out);
    helper.getNode('cls').receive({ payload: { data, type: 'float32', dim: [2, 3, 224, 224] } });
    const msg = await answered;
    assert.strictEqual(msg.payload.length, 2);
    msg.payload.forEach((labels, i) => assertSameLabels(labels, expected[i]));
  });

  it('modelType path: a local .onnx path selects the model imgcls serve --model names after it', async function () {
    await load(flow({ model: '/data/models/resnet-50-ONNX.onnx', modelType: 'path' }), credentials);
    const out = helper.getNode('out');
    const answered = nextMessage(out);
    helper.getNode('cls').receive({ payload: fs.readFileSync(CAT) });
    assertSameLabels((await answered).payload, reference[CAT]);
  });

  it('topK and threshold from the message when the properties say msg; overrides per message', async function () {
    await load(flow({ topK: 'k', topKType: 'msg', threshold: 'min', thresholdType: 'msg' }), credentials);
    const cls = helper.getNode('cls');
    const out = helper.getNode('out');
    let answered = nextMessage(out);
    cls.receive({ payload: fs.readFileSync(CAT), k: 2, min: 0.3 });
    let msg = await answered;
    const expected = pythonLabels(server.target, [CAT], { token: TOKEN, topK: 2, threshold: 0.3 })[CAT];
    assertSameLabels(msg.payload, expected);
    assert.strictEqual(msg.payload.length, 2);

    answered = nextMessage(out);
    cls.receive({ payload: fs.readFileSync(CAT), k: 3, preprocessorConfigOverrides: { crop_pct: 1.0 } });
    msg = await answered;
    const overridden = pythonLabels(server.target, [CAT], { token: TOKEN, topK: 3, preprocessorOverrides: { crop_pct: 1.0 } })[CAT];
    assertSameLabels(msg.payload, overridden);
    assert.notStrictEqual(msg.payload[0].score, reference[CAT][0].score);
  });

  it('a bad input is an error with the message (for Catch nodes), and the next message is served', async function () {
    await load(flow({ topK: 'k', topKType: 'msg' }), credentials);
    const cls = helper.getNode('cls');
    const out = helper.getNode('out');
    const cases = [
      [{ payload: Buffer.from('not an image'), id: 1 }, /INVALID_ARGUMENT: inputs\[0\]/],
      [{ payload: 42, id: 2 }, /cannot classify a number/],
      [{ id: 3 }, /no input at msg.payload/],
      [{ payload: fs.readFileSync(CAT), k: 'many', id: 4 }, /topK must be a number, got "many"/],
      [{ payload: fs.readFileSync(CAT), preprocessorConfigOverrides: { size: { width: 224, height: 224 } }, id: 5 }, /INVALID_ARGUMENT: ConvNextImageProcessor: size must be \{shortest_edge\}/],
    ];
    for (const [input, pattern] of cases) {
      const failed = nextError(cls);
      cls.receive(input);
      const { error, msg } = await failed;
      assert.ok(pattern.test(String(error && (error.message || error))), `${input.id}: ${error}`);
      assert.strictEqual(msg.id, input.id);
      assert.strictEqual(cls.status.lastCall.args[0].fill, 'red');
    }
    const answered = nextMessage(out);
    cls.receive({ payload: fs.readFileSync(COFFEE) });
    assertSameLabels((await answered).payload, reference[COFFEE]);
  });

  it('an unknown model, a missing server and a wrong token are errors naming the cause', async function () {
    await load([
      ...flow({ model: 'owner/no-such-model' }),
      { id: 'bad-srv', type: 'imgcls-server', address: server.target },
      { id: 'no-srv', type: 'imgcls-classification', server: 'missing', wires: [[]] },
      { id: 'bad-token', type: 'imgcls-classification', server: 'bad-srv', wires: [[]] },
    ], { ...credentials, 'bad-srv': { token: 'wrong' } });
    for (const [id, pattern] of [['cls', /NOT_FOUND.*no-such-model/], ['no-srv', /no imgcls-server configured/], ['bad-token', /UNAUTHENTICATED/]]) {
      const node = helper.getNode(id);
      const failed = nextError(node);
      node.receive({ payload: fs.readFileSync(CAT) });
      const { error } = await failed;
      assert.ok(pattern.test(String(error.message || error)), `${id}: ${error}`);
    }
  });

  it('one channel per server config node, shared by its classification nodes', async function () {
    await load([...flow(), { id: 'cls2', type: 'imgcls-classification', server: 'srv', wires: [['out']] }], credentials);
    const srv = helper.getNode('srv');
    const client = srv.client;
    const out = helper.getNode('out');
    for (const id of ['cls', 'cls2']) {
      const answered = nextMessage(out);
      helper.getNode(id).receive({ payload: fs.readFileSync(CAT) });
      await answered;
    }
    assert.strictEqual(srv.client, client);
  });

  it('on redeploy, a message in flight is answered once, then the channel is closed', async function () {
    await load(flow(), credentials);
    const srv = helper.getNode('srv');
    const out = helper.getNode('out');
    const received = [];
    out.on('input', (msg) => received.push(msg));
    const cls = helper.getNode('cls');
    const closed = [];
    const original = srv.client.close.bind(srv.client);
    srv.client.close = () => { closed.push(cls.send.callCount); original(); };
    cls.receive({ payload: fs.readFileSync(path.join(IMAGES, 'coffee_1920x1280.jpg')), id: 'in-flight' });
    while (srv.inFlight.size === 0) await new Promise((resolve) => setImmediate(resolve)); // being classified
    // A redeploy of the modified nodes: the classification node and its server closed at once, as Node-RED does;
    // the node downstream stays and gets the answer, once.
    await Promise.all([cls.close(false), srv.close(false)]);
    await until(() => received.length > 0); // delivery to the next node is asynchronous
    assert.deepStrictEqual(closed, [1], 'the channel was closed before the message in flight was answered');
    assert.deepStrictEqual(received.map((m) => m.id), ['in-flight']);
  });

  it('a server that goes down: a message gets an error after the timeout, not silence; one sent while it restarts is answered', async function () {
    this.timeout(180000);
    await load([
      ...flow(),
      { id: 'patient-srv', type: 'imgcls-server', address: server.target, timeout: 90 },
      { id: 'cls2', type: 'imgcls-classification', server: 'patient-srv', wires: [['out']] },
    ].map((n) => (n.id === 'srv' ? { ...n, timeout: 3 } : n)), { ...credentials, 'patient-srv': { token: TOKEN } });
    const cls = helper.getNode('cls');
    const cls2 = helper.getNode('cls2');
    const out = helper.getNode('out');
    for (const node of [cls, cls2]) {
      const answered = nextMessage(out);
      node.receive({ payload: fs.readFileSync(CAT) });
      await answered;
    }

    await server.stop();
    const failed = nextError(cls);
    cls.receive({ payload: fs.readFileSync(CAT), id: 'while-down' });
    const { error, msg } = await failed;
    assert.strictEqual(msg.id, 'while-down');
    assert.ok(/DEADLINE_EXCEEDED/.test(String(error.message || error)), String(error));

    const answered = Promise.race([nextMessage(out, 90000), nextError(cls2, 90000).then(({ error: err }) => { throw err; })]);
    cls2.receive({ payload: fs.readFileSync(CAT), id: 'during-restart' });
    await server.restart();
    const after = await answered;
    assert.strictEqual(after.id, 'during-restart');
    assertSameLabels(after.payload, reference[CAT]);
  });

  describe('the FlowFuse node\'s example flows, with the type changed and a server chosen', function () {
    function converted() {
      const nodes = exampleFlow().filter((n) => n.type === 'image-classification');
      assert.strictEqual(nodes.length, 3);
      // On a tab of their own, as in an editor's flow (a node with a position belongs to a tab).
      return [
        { id: 'tab', type: 'tab', label: 'FlowFuse examples' },
        { id: 'srv', type: 'imgcls-server', address: server.target },
        ...nodes.map((n) => ({ ...n, type: 'imgcls-classification', server: 'srv', z: 'tab', wires: [['out']] })),
        { id: 'out', type: 'helper', z: 'tab' },
      ];
    }

    it('single image, topK and threshold from the message (vit-base-patch16-224)', async function () {
      await load(converted(), credentials);
      const out = helper.getNode('out');
      for (const file of [CAT, ROCKET]) {
        const answered = nextMessage(out);
        // As the flow's change node leaves it: the image moved to msg.image, msg.topK 3, msg.thres 0.05.
        helper.getNode('903b8d0c4750e324').receive({ image: fs.readFileSync(file), topK: 3, thres: 0.05 });
        const expected = pythonLabels(server.target, [file], { token: TOKEN, model: 'vit-base-patch16-224', topK: 3, threshold: 0.05 })[file];
        assertSameLabels((await answered).payload, expected);
      }
    });

    it('a local file (resnet-50-ONNX, topK 1, threshold 0.5)', async function () {
      await load(converted(), credentials);
      const answered = nextMessage(helper.getNode('out'));
      helper.getNode('25a103fa3e5ced6e').receive({ payload: fs.readFileSync(COFFEE) });
      const expected = pythonLabels(server.target, [COFFEE], { token: TOKEN, model: 'resnet-50-ONNX', topK: 1, threshold: 0.5 })[COFFEE];
      assert.strictEqual(expected.length, 1);
      assertSameLabels((await answered).payload, expected);
    });

    it('a batch of two (resnet-50-ONNX); its size override is refused as transformers refuses it for this processor', async function () {
      await load(converted(), credentials);
      const node = helper.getNode('a8e34856bea9f3cd');
      const images = [fs.readFileSync(CAT), fs.readFileSync(ROCKET)];
      const answered = nextMessage(helper.getNode('out'));
      node.receive({ images });
      const expected = pythonLabels(server.target, [CAT, ROCKET], { token: TOKEN, model: 'resnet-50-ONNX', topK: 1, threshold: 0.1 });
      const batch = (await answered).payload;
      assert.strictEqual(batch.length, 2);
      assertSameLabels(batch[0], expected[CAT]);
      assertSameLabels(batch[1], expected[ROCKET]);
      // The flow's {"size": {"width": 224, "height": 224}}: a ConvNext processor (ResNet-50's) takes only a
      // shortest edge, so the Python client and transformers refuse it too; the error reaches Catch nodes.
      const failed = nextError(node);
      node.receive({ images, preprocessorConfigOverrides: { size: { width: 224, height: 224 } } });
      const { error } = await failed;
      assert.ok(/INVALID_ARGUMENT: ConvNextImageProcessor: size must be \{shortest_edge\}/.test(error.message), error.message);
    });
  });
});
