'use strict';
// imgcls-client: the imgcls.v1 gRPC API from Node.js, over @grpc/grpc-js with the proto shipped in this package.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { toInput, toStruct, fromStruct } = require('./inputs');

const PROTO_DIR = path.join(__dirname, '..', 'proto');
const DEFAULT_TARGET = '127.0.0.1:50051';
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };

const definition = protoLoader.loadSync(['imgcls/v1/classifier.proto', 'grpc/health/v1/health.proto'], LOADER_OPTIONS);
const loaded = grpc.loadPackageDefinition(definition);
const ImageClassifierService = loaded.imgcls.v1.ImageClassifierService;
const Health = loaded.grpc.health.v1.Health;

const FUNCTIONS = {
  softmax: 'FUNCTION_TO_APPLY_SOFTMAX',
  sigmoid: 'FUNCTION_TO_APPLY_SIGMOID',
  none: 'FUNCTION_TO_APPLY_NONE',
};
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, value]) => [value, name]));

// Calls refused before any work (a server shutting down, a replica gone) are retried, as by the Python client;
// CANCELLED too: imgcls never answers it itself, but gRPC core does for calls it had not yet handed over when a
// server stops, or that were still running when its grace ran out (every method is idempotent). The server's
// overload answer is RESOURCE_EXHAUSTED and never retried. (grpc-js has no client-side health checking.)
const SERVICE_CONFIG = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [{
    name: [{ service: 'imgcls.v1.ImageClassifierService' }],
    retryPolicy: { maxAttempts: 5, initialBackoff: '0.01s', maxBackoff: '0.2s', backoffMultiplier: 2, retryableStatusCodes: ['UNAVAILABLE', 'CANCELLED'] },
  }],
};

/** A call failed: code is the gRPC status code (a number, grpc.status), codeName its name, details the server's message. */
class ClientError extends Error {
  constructor(code, details) {
    const codeName = CODE_NAMES[code] || 'UNKNOWN';
    super(`${codeName}: ${details}`);
    this.name = 'ClientError';
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }
}

function clientError(err) {
  if (err instanceof ClientError) return err;
  return new ClientError(typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN, err.details || err.message || '');
}

function prediction(label) {
  return { label: label.label, score: label.score, index: label.index };
}

function predictions(result) {
  return (result.labels || []).map(prediction);
}

function parameters({ topK, threshold, functionToApply } = {}) {
  if (functionToApply !== undefined && functionToApply !== null && !(functionToApply in FUNCTIONS)) {
    throw new TypeError(`functionToApply must be softmax, sigmoid, none or null, got ${functionToApply}`);
  }
  const out = { function_to_apply: functionToApply ? FUNCTIONS[functionToApply] : 'FUNCTION_TO_APPLY_UNSPECIFIED' };
  if (topK !== undefined && topK !== null) {
    if (!Number.isInteger(Number(topK)) || Number(topK) < 0) throw new TypeError(`topK must be a non-negative integer, got ${topK}`);
    out.top_k = Number(topK);
  }
  if (threshold !== undefined && threshold !== null) {
    if (!Number.isFinite(Number(threshold))) throw new TypeError(`threshold must be a number, got ${threshold}`);
    out.threshold = Number(threshold);
  }
  return out;
}

/**
 * A ClassifyRequest: topK (undefined: the server's 5, 0: all), threshold, functionToApply (softmax, sigmoid,
 * none; undefined: the model's default), preprocessorOverrides (merged over the model's preprocessor_config.json).
 */
function buildRequest(images, options = {}) {
  const request = {
    model: options.model || '',
    inputs: images.map(toInput),
    parameters: parameters(options),
    request_id: options.requestId || '',
  };
  if (options.preprocessorOverrides && Object.keys(options.preprocessorOverrides).length) {
    request.preprocessor_overrides = toStruct(options.preprocessorOverrides);
  }
  return request;
}

function streamResult(response) {
  const code = response.status ? response.status.code : 0;
  return {
    requestId: response.request_id,
    model: response.model,
    predictions: (response.results || []).map(predictions),
    code,
    codeName: CODE_NAMES[code] || 'UNKNOWN',
    message: response.status ? response.status.message : '',
    skipped: Boolean(response.skipped),
    ok: code === 0 && !response.skipped,
  };
}

function modelInfo(model) {
  return { ...model, preprocessing: fromStruct(model.preprocessing) };
}

function credentials({ tls, rootCertificates, clientCert }) {
  if (!tls && !rootCertificates && !clientCert) return grpc.credentials.createInsecure();
  const key = clientCert ? Buffer.from(clientCert.key) : null;
  const cert = clientCert ? Buffer.from(clientCert.cert) : null;
  return grpc.credentials.createSsl(rootCertificates ? Buffer.from(rootCertificates) : null, key, cert);
}

class Client {
  /**
   * target: host:port (or any gRPC target, e.g. dns:///name:50051). Options: timeoutMs (default 60000, null:
   * no deadline) for unary calls, token (bearer), tls, rootCertificates (PEM), clientCert {cert, key} (PEM, mTLS),
   * maxMessageBytes, channelOptions (extra grpc-js channel options), waitForReady (calls made while the server
   * cannot be reached wait for it, until their deadline, instead of failing at once with UNAVAILABLE).
   */
  constructor(target = DEFAULT_TARGET, options = {}) {
    this.target = target;
    this.timeoutMs = options.timeoutMs === undefined ? 60000 : options.timeoutMs;
    this.token = options.token || null;
    this._waitForReady = Boolean(options.waitForReady);
    const max = options.maxMessageBytes || DEFAULT_MAX_MESSAGE_BYTES;
    const channelOptions = {
      'grpc.max_receive_message_length': max,
      'grpc.max_send_message_length': max,
      'grpc.service_config': JSON.stringify(SERVICE_CONFIG),
      'grpc.enable_retries': 1,
      'grpc.per_rpc_retry_buffer_size': max,
      ...(options.channelOptions || {}),
    };
    const creds = credentials(options);
    this.stub = new ImageClassifierService(target, creds, channelOptions);
    // The health stub shares the classifier's channel.
    this.healthStub = new Health(target, creds, { ...channelOptions, channelOverride: this.stub.getChannel() });
  }

  close() {
    this.healthStub.close();
    this.stub.close();
  }

  _metadata() {
    const metadata = new grpc.Metadata(this._waitForReady ? { waitForReady: true } : undefined);
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  _callOptions(timeoutMs) {
    const ms = timeoutMs === undefined ? this.timeoutMs : timeoutMs;
    return ms === null ? {} : { deadline: new Date(Date.now() + ms) };
  }

  _unary(stub, method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      stub[method](request, this._metadata(), this._callOptions(timeoutMs), (err, response) => {
        if (err) reject(clientError(err));
        else resolve(response);
      });
    });
  }

  /** One image's ranked predictions [{label, score, index}]. */
  async classify(image, options = {}) {
    return (await this.classifyBatch([image], options))[0];
  }

  /** Several images in one request; one list of predictions per input, in order. */
  async classifyBatch(images, options = {}) {
    const response = await this.classifyRequest(buildRequest(images, options), options);
    return response.results.map(predictions);
  }

  /** A ClassifyRequest as it is (see buildRequest) -> the ClassifyResponse. */
  classifyRequest(request, { timeoutMs } = {}) {
    return this._unary(this.stub, 'Classify', request, timeoutMs);
  }

  /**
   * Classify a stream of frames (an iterable or async iterable of images, or of ClassifyStreamRequest objects):
   * yields one result per frame, in order, as they come back. model, topK, threshold, functionToApply and
   * preprocessorOverrides go on the first frame and apply to all; dropStale answers stale frames skipped.
   * A frame that cannot be sent, or an exception of the frames iterable, ends the stream: the frames before it
   * are answered, then that exception is thrown here. No deadline unless timeoutMs is given.
   */
  async *classifyStream(frames, options = {}) {
    const call = this.stub.ClassifyStream(this._metadata(), this._callOptions(options.timeoutMs === undefined ? null : options.timeoutMs));
    const queue = [];
    let wake = null;
    let ended = false;
    let failure = null; // the call's own error
    let frameFailure = null; // an error from the frames
    const notify = () => { if (wake) { const w = wake; wake = null; w(); } };
    call.on('data', (response) => { queue.push(response); notify(); });
    call.on('error', (err) => { failure = clientError(err); ended = true; notify(); });
    call.on('end', () => { ended = true; notify(); });

    const first = buildRequest([], options);
    const defaults = {
      model: first.model,
      parameters: first.parameters,
      drop_stale: Boolean(options.dropStale),
      ...(first.preprocessor_overrides ? { preprocessor_overrides: first.preprocessor_overrides } : {}),
    };
    const writer = (async () => {
      let index = 0;
      try {
        for await (const frame of frames) {
          if (ended) break;
          let request = isStreamRequest(frame) ? frame : { inputs: [toInputNoted(frame, index)], request_id: String(index) };
          if (index === 0) request = { ...defaults, ...request };
          index += 1;
          // Respect flow control: wait for the stream to drain before the next frame.
          if (!call.write(request)) await new Promise((resolve) => call.once('drain', resolve));
        }
      } catch (err) {
        frameFailure = err;
      }
      if (!ended) call.end();
    })();

    try {
      for (;;) {
        if (queue.length) {
          yield streamResult(queue.shift());
          continue;
        }
        if (ended) break;
        await new Promise((resolve) => { wake = resolve; });
      }
      await writer;
    } finally {
      if (!ended) call.cancel(); // the caller stopped reading
    }
    if (frameFailure) throw frameFailure;
    if (failure) throw failure;
  }

  /** Every served model (ModelInfo objects; preprocessing as plain JSON). */
  async listModels({ timeoutMs } = {}) {
    const response = await this._unary(this.stub, 'ListModels', {}, timeoutMs);
    return response.models.map(modelInfo);
  }

  /** One served model ('' = the default). */
  async getModel(name = '', { timeoutMs } = {}) {
    const response = await this._unary(this.stub, 'GetModel', { name }, timeoutMs);
    return modelInfo(response.model);
  }

  /** grpc.health.v1 status of a service ('' = the server): 'SERVING', 'NOT_SERVING', ... */
  async health(service = '', { timeoutMs } = {}) {
    const response = await this._unary(this.healthStub, 'Check', { service }, timeoutMs);
    return response.status;
  }

  /** Resolves once the channel is connected (or rejects after timeoutMs). */
  waitForReady(timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(new Date(Date.now() + timeoutMs), (err) => (err ? reject(err) : resolve()));
    });
  }
}

function isStreamRequest(frame) {
  return frame !== null && typeof frame === 'object' && Array.isArray(frame.inputs);
}

function toInputNoted(frame, index) {
  try {
    return toInput(frame);
  } catch (err) {
    err.message += ` (frame ${index} of the stream)`;
    throw err;
  }
}

module.exports = { Client, ClientError, buildRequest, toInput, status: grpc.status, PROTO_DIR, DEFAULT_TARGET };
