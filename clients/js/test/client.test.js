'use strict';
// imgcls-client against a real imgcls server (a child process on a free port, the embedded EfficientNet-Lite0),
// compared with the Python client's answers for the same inputs.

const assert = require('assert');
const fs = require('fs');
const path = require('path');
const { Client, ClientError, status, buildRequest } = require('..');
const { ServeProcess, IMAGES, tempDir } = require('./support/server');
const { pythonLabels, pythonTensorLabels, decoded } = require('./support/python');
const { makeCerts } = require('./support/certs');

const CAT = path.join(IMAGES, 'cat.jpg');
const COFFEE = path.join(IMAGES, 'coffee.jpg');
const ROCKET = path.join(IMAGES, 'rocket.jpg');
const TOKEN = 'js-client-token-7c1d';

function labels(predictions) {
  return predictions.map((p) => p.label);
}

function assertClose(actual, expected, tolerance = 1e-5) {
  assert.deepStrictEqual(labels(actual), labels(expected));
  actual.forEach((p, i) => assert.ok(Math.abs(p.score - expected[i].score) <= tolerance, `${p.label}: ${p.score} vs ${expected[i].score}`));
}

async function expectError(promise, code, fragment) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof ClientError, `not a ClientError: ${err}`);
    assert.strictEqual(err.code, code, `${err.codeName}: ${err.details}`);
    assert.strictEqual(err.codeName, Object.keys(status).find((name) => status[name] === code));
    assert.ok(err.details.includes(fragment), `"${err.details}" lacks "${fragment}"`);
    return true;
  });
}

describe('imgcls-client', function () {
  const server = new ServeProcess();
  let client;
  let reference;

  before(async function () {
    await server.start();
    client = new Client(server.target, { timeoutMs: 30000 });
    reference = pythonLabels(server.target, [CAT, COFFEE, ROCKET]);
  });

  after(async function () {
    if (client) client.close();
    await server.stop();
  });

  describe('inputs, as the Python client classifies them', function () {
    it('a Buffer of encoded image bytes', async function () {
      assertClose(await client.classify(fs.readFileSync(CAT)), reference[CAT]);
    });

    it('a Uint8Array and an ArrayBuffer', async function () {
      const bytes = fs.readFileSync(COFFEE);
      assertClose(await client.classify(new Uint8Array(bytes)), reference[COFFEE]);
      const copy = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      assertClose(await client.classify(copy), reference[COFFEE]);
    });

    it('a base64 string and a data: URL', async function () {
      const base64 = fs.readFileSync(ROCKET).toString('base64');
      assertClose(await client.classify(base64), reference[ROCKET]);
      assertClose(await client.classify(`data:image/jpeg;base64,${base64}`), reference[ROCKET]);
    });

    it('a decoded RGB bitmap and a Jimp image (RGBA bitmap)', async function () {
      const rgb = decoded(CAT, 'RGB');
      const rgba = decoded(CAT, 'RGBA');
      const fromRgb = await client.classify({ width: rgb.width, height: rgb.height, data: rgb.data });
      const fromJimp = await client.classify({ bitmap: { width: rgba.width, height: rgba.height, data: rgba.data } });
      // The same pixels, decoded by Pillow here and by the server from the JPEG (its draft mode off at this size).
      assert.strictEqual(fromRgb[0].label, reference[CAT][0].label);
      assertClose(fromJimp, fromRgb);
      assert.ok(Math.abs(fromRgb[0].score - reference[CAT][0].score) < 0.02, `${fromRgb[0].score}`);
    });

    it('a tensor {data, type, dim}, as the Python client sends a float32 array', async function () {
      const dims = [1, 3, 224, 224];
      const data = new Float32Array(3 * 224 * 224).fill(0.25);
      const expected = pythonTensorLabels(server.target, dims, 0.25);
      assertClose(await client.classify({ data, type: 'float32', dim: dims }), expected);
      assertClose(await client.classify({ data: Array.from(data), type: 'float32', dims }), expected);
    });

    it('an array of inputs as one batch, answered in order', async function () {
      const bytes = [CAT, COFFEE, ROCKET].map((file) => fs.readFileSync(file));
      const results = await client.classifyBatch([bytes[0], bytes[1].toString('base64'), bytes[2]]);
      assert.strictEqual(results.length, 3);
      results.forEach((result, i) => assertClose(result, reference[[CAT, COFFEE, ROCKET][i]]));
    });

    it('refuses what it cannot send, before any call, naming the value', function () {
      assert.throws(() => buildRequest([42]), /cannot classify a number: pass a Buffer, a base64 string/);
      assert.throws(() => buildRequest(['https://example.com/cat.jpg']), /URLs are not fetched/);
      assert.throws(() => buildRequest([{ width: 2, height: 2, data: Buffer.alloc(5) }]), /needs 1, 3 or 4 bytes a pixel, got 5 bytes/);
      assert.throws(() => buildRequest([{ data: [1, 2], type: 'float32', dim: [1, 3] }]), /needs 3 values, got 2/);
      assert.throws(() => buildRequest([{ data: [1], type: 'int64', dim: [1] }]), /tensor type must be float32 or float16/);
      assert.throws(() => buildRequest([{ width: 1, height: 1, data: 'abc' }]), /bitmap data must be a Buffer, a Uint8Array, a Uint8ClampedArray or an array of bytes, got string/);
      assert.throws(() => buildRequest([{ bitmap: { width: 1, height: 1, data: { 0: 1 } } }]), /bitmap data must be .* got Object/);
      assert.throws(() => buildRequest([{ width: 1, height: 1, data: [0, 256, 0] }]), /must hold bytes \(integers 0-255\); data\[1\] is 256/);
      assert.throws(() => buildRequest([{ width: 1, height: 1, data: [0, 1.5, 0] }]), /data\[1\] is 1.5/);
    });

    it('a bitmap whose data is a plain array of bytes (read back from JSON) is sent as those bytes', async function () {
      const rgb = decoded(CAT, 'RGB');
      const request = buildRequest([{ width: rgb.width, height: rgb.height, data: Array.from(rgb.data) }]);
      assert.ok(Buffer.from(rgb.data).equals(request.inputs[0].raw.data));
      assert.strictEqual(request.inputs[0].raw.format, 'PIXEL_FORMAT_RGB8');
      const fromArray = await client.classify({ bitmap: { width: rgb.width, height: rgb.height, data: Array.from(rgb.data) } });
      assertClose(fromArray, await client.classify({ width: rgb.width, height: rgb.height, data: rgb.data }));
    });
  });

  describe('options', function () {
    it('topK, threshold, functionToApply and preprocessor overrides, as the Python client', async function () {
      const cases = [
        { topK: 2 },
        { topK: 0, threshold: 0.1 },
        { functionToApply: 'none', topK: 3 },
        { functionToApply: 'sigmoid', topK: 3 },
        { preprocessorOverrides: { crop_pct: 1.0 } },
        { preprocessorOverrides: { do_normalize: false }, topK: 3 },
      ];
      for (const options of cases) {
        const expected = pythonLabels(server.target, [CAT], options)[CAT];
        const actual = await client.classify(fs.readFileSync(CAT), options);
        assertClose(actual, expected);
        if (options.topK) assert.strictEqual(actual.length, options.topK);
        if (options.threshold) assert.ok(actual.every((p) => p.score >= options.threshold) && actual.length < 5);
      }
      const logits = await client.classify(fs.readFileSync(CAT), { functionToApply: 'none', topK: 1 });
      assert.ok(logits[0].score > 1, `a logit, not a probability: ${logits[0].score}`);
      assert.ok(Number.isInteger(logits[0].index));
    });

    it('an override the model\'s image processor does not take is INVALID_ARGUMENT, as transformers refuses it', async function () {
      await expectError(
        client.classify(fs.readFileSync(CAT), { preprocessorOverrides: { size: { height: 256, width: 256 } } }),
        status.INVALID_ARGUMENT,
        'ConvNextImageProcessor: size must be {shortest_edge}',
      );
    });

    it('bad options are a TypeError before any call', function () {
      assert.throws(() => buildRequest([], { topK: -1 }), /topK must be a non-negative integer/);
      assert.throws(() => buildRequest([], { threshold: 'high' }), /threshold must be a number/);
      assert.throws(() => buildRequest([], { functionToApply: 'relu' }), /functionToApply must be softmax, sigmoid, none/);
      assert.throws(() => buildRequest([], { preprocessorOverrides: { size: () => 1 } }), /JSON values only/);
    });
  });

  describe('streams', function () {
    it('one result per frame, in order, a bad frame answered on its own and the stream going on', async function () {
      const frames = [fs.readFileSync(CAT), Buffer.from('not an image'), fs.readFileSync(COFFEE), fs.readFileSync(ROCKET)];
      const results = [];
      for await (const result of client.classifyStream(frames, { topK: 3 })) results.push(result);
      assert.deepStrictEqual(results.map((r) => r.requestId), ['0', '1', '2', '3']);
      assert.deepStrictEqual(results.map((r) => r.ok), [true, false, true, true]);
      assert.strictEqual(results[1].code, status.INVALID_ARGUMENT);
      assert.strictEqual(results[1].codeName, 'INVALID_ARGUMENT');
      assert.ok(/inputs\[0\]/.test(results[1].message), results[1].message);
      assertClose(results[0].predictions[0], reference[CAT].slice(0, 3));
      assertClose(results[2].predictions[0], reference[COFFEE].slice(0, 3));
      assertClose(results[3].predictions[0], reference[ROCKET].slice(0, 3));
    });

    it('frames from an async generator; a frame that cannot be sent ends the stream after the ones before', async function () {
      async function* frames() {
        yield fs.readFileSync(CAT);
        yield fs.readFileSync(COFFEE);
        yield 42;
      }
      const results = [];
      await assert.rejects(async () => {
        for await (const result of client.classifyStream(frames())) results.push(result);
      }, /cannot classify a number.*\(frame 2 of the stream\)/);
      assert.deepStrictEqual(results.map((r) => r.ok), [true, true]);
    });

    it('a stream on a model the server does not serve fails with NOT_FOUND', async function () {
      await expectError((async () => {
        for await (const result of client.classifyStream([fs.readFileSync(CAT)], { model: 'no-such-model' })) {
          if (!result.ok) throw new ClientError(result.code, result.message);
        }
      })(), status.NOT_FOUND, 'no-such-model');
    });
  });

  describe('calls and errors', function () {
    it('health, list models and get model', async function () {
      assert.strictEqual(await client.health(), 'SERVING');
      const models = await client.listModels();
      assert.deepStrictEqual(models.map((m) => m.name), ['efficientnet-lite0']);
      const model = await client.getModel('');
      assert.strictEqual(model.name, 'efficientnet-lite0');
      assert.strictEqual(typeof model.preprocessing, 'object');
      assert.ok(model.preprocessing !== null);
    });

    it('an unknown model is NOT_FOUND, a bad image INVALID_ARGUMENT, with the server\'s message', async function () {
      await expectError(client.classify(fs.readFileSync(CAT), { model: 'no-such-model' }), status.NOT_FOUND, 'no-such-model');
      await expectError(client.classify(Buffer.from('not an image')), status.INVALID_ARGUMENT, 'inputs[0]');
      await expectError(client.classify('%%% not base64 %%%'), status.INVALID_ARGUMENT, 'inputs[0]');
    });

    it('a deadline that passes is DEADLINE_EXCEEDED', async function () {
      const hurried = new Client(server.target, { timeoutMs: 1 });
      try {
        await expectError(hurried.classify(fs.readFileSync(path.join(IMAGES, 'coffee_1920x1280.jpg'))), status.DEADLINE_EXCEEDED, 'Deadline');
      } finally {
        hurried.close();
      }
    });

    it('waitForReady: a call made while the server restarts is answered once it is back', async function () {
      this.timeout(120000);
      const patient = new Client(server.target, { timeoutMs: 90000, waitForReady: true, channelOptions: { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 } });
      try {
        assert.strictEqual((await patient.classify(fs.readFileSync(CAT)))[0].label, reference[CAT][0].label);
        await server.stop();
        const call = patient.classify(fs.readFileSync(CAT));
        await expectError(client.classify(fs.readFileSync(CAT), { timeoutMs: 2000 }), status.UNAVAILABLE, '');
        await server.restart();
        assertClose(await call, reference[CAT]);
        await client.waitForReady(30000); // the shared client, in its reconnect backoff meanwhile
        assertClose(await client.classify(fs.readFileSync(CAT)), reference[CAT]);
      } finally {
        patient.close();
      }
    });

    it('a server that is not there is UNAVAILABLE', async function () {
      const nowhere = new Client('127.0.0.1:1', { timeoutMs: 3000 });
      try {
        await assert.rejects(nowhere.classify(fs.readFileSync(CAT)), (err) => err instanceof ClientError && [status.UNAVAILABLE, status.DEADLINE_EXCEEDED].includes(err.code));
      } finally {
        nowhere.close();
      }
    });
  });
});

describe('imgcls-client security', function () {
  const dir = tempDir();
  const certs = makeCerts(dir);
  const tokens = path.join(dir, 'tokens');
  fs.writeFileSync(tokens, `${TOKEN}\n`);
  const server = new ServeProcess('--auth-token-file', tokens, '--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-ca', certs.ca);
  const pem = (file) => fs.readFileSync(file);
  // By name (the certificate's DNS:localhost): TLS does not send an IP address as the server name.
  const named = { 'grpc.ssl_target_name_override': 'localhost' };
  const secure = (options) => new Client(server.target, { timeoutMs: 10000, rootCertificates: pem(certs.ca), channelOptions: named, ...options });

  before(async function () {
    await server.start();
  });

  after(async function () {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('mTLS and a bearer token: classified', async function () {
    const client = secure({ token: TOKEN, clientCert: { cert: pem(certs.clientCert), key: pem(certs.clientKey) } });
    try {
      const predictions = await client.classify(fs.readFileSync(CAT));
      assert.strictEqual(predictions[0].label, 'Egyptian cat');
      assert.strictEqual(await client.health(), 'SERVING');
    } finally {
      client.close();
    }
  });

  it('no token or a wrong one is UNAUTHENTICATED', async function () {
    const clientCert = { cert: pem(certs.clientCert), key: pem(certs.clientKey) };
    for (const token of [undefined, 'wrong']) {
      const client = secure({ token, clientCert });
      try {
        await expectError(client.classify(fs.readFileSync(CAT)), status.UNAUTHENTICATED, 'bearer token');
      } finally {
        client.close();
      }
    }
  });

  it('without a client certificate, or trusting another CA, no call gets through', async function () {
    const other = makeCerts(tempDir());
    for (const client of [secure({ token: TOKEN }), new Client(server.target, { timeoutMs: 5000, token: TOKEN, channelOptions: named, rootCertificates: pem(other.ca), clientCert: { cert: pem(other.clientCert), key: pem(other.clientKey) } })]) {
      try {
        await assert.rejects(client.classify(fs.readFileSync(CAT)), (err) => err instanceof ClientError && err.code === status.UNAVAILABLE);
      } finally {
        client.close();
      }
    }
    fs.rmSync(other.dir, { recursive: true, force: true });
  });

  it('plaintext to a TLS port gets nothing', async function () {
    const client = new Client(server.target, { timeoutMs: 5000, token: TOKEN });
    try {
      await assert.rejects(client.classify(fs.readFileSync(CAT)), (err) => err instanceof ClientError && err.code === status.UNAVAILABLE);
    } finally {
      client.close();
    }
  });
});
