'use strict';
// imgcls-classification: the FlowFuse image-classification node's properties, inputs and outputs, with the
// model served by an imgcls server (an imgcls-server config node) instead of loaded into Node-RED.

// The served model a FlowFuse `model` selects: a Hugging Face repo id (owner/name, with an optional @revision)
// selects `name`; a local path (modelType "path", e.g. /data/models/resnet50.onnx) the name `imgcls serve --model`
// gives that path: its last part without .onnx (or a model spec's .yaml, .yml, .json).
function servedName(model) {
  let text = String(model || '').trim().split('@')[0].replace(/[\\/]+$/, '');
  text = text.slice(Math.max(text.lastIndexOf('/'), text.lastIndexOf('\\')) + 1);
  for (const suffix of ['.onnx', '.yaml', '.yml', '.json']) {
    if (text.endsWith(suffix) && text.length > suffix.length) return text.slice(0, -suffix.length);
  }
  return text;
}

function isBatch(value) {
  return Array.isArray(value);
}

function labels(predictions) {
  return predictions.map(({ label, score }) => ({ label, score }));
}

module.exports = function register(RED) {
  function ImgclsClassificationNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    node.server = RED.nodes.getNode(config.server);
    node.property = config.property || 'payload';
    node.propertyType = config.propertyType || 'msg';
    node.model = servedName(config.model);
    // dtype and modelType are the server's to choose (its --dtype / --model): kept for the editor only.
    node.dtype = config.dtype;
    node.modelType = config.modelType;
    const pending = new Set();

    if (!node.server) {
      node.status({ fill: 'red', shape: 'ring', text: 'no server' });
    }

    function typedValue(value, type, msg, what) {
      if (value === undefined || value === '') return undefined;
      const result = RED.util.evaluateNodeProperty(value, type || 'num', node, msg);
      if (result === undefined || result === null || result === '') return undefined;
      const number = Number(result);
      if (!Number.isFinite(number)) throw new TypeError(`${what} must be a number, got ${JSON.stringify(result)}`);
      return number;
    }

    node.on('input', (msg, send, done) => {
      let value;
      let options;
      try {
        if (!node.server) throw new Error('no imgcls-server configured: choose a server in the node');
        value = RED.util.evaluateNodeProperty(node.property, node.propertyType, node, msg);
        if (value === undefined || value === null) {
          throw new TypeError(`no input at ${node.propertyType}.${node.property}`);
        }
        const topK = typedValue(config.topK, config.topKType, msg, 'topK');
        const threshold = typedValue(config.threshold, config.thresholdType, msg, 'threshold');
        options = { model: node.model, topK, threshold };
        if (msg.preprocessorConfigOverrides !== undefined && msg.preprocessorConfigOverrides !== null) {
          options.preprocessorOverrides = msg.preprocessorConfigOverrides;
        }
      } catch (err) {
        node.status({ fill: 'red', shape: 'ring', text: err.message.slice(0, 60) });
        done(err);
        return;
      }
      const batch = isBatch(value);
      const call = node.server
        .run((client) => client.classifyBatch(batch ? value : [value], options))
        .then((results) => {
          // One ranking per result: a tensor with a batch dimension N is N images. A single input that gave more
          // than one is answered as a batch is, one list per image, so no image's labels are dropped.
          const many = batch || results.length !== 1;
          msg.payload = many ? results.map(labels) : labels(results[0]);
          const top = results[0] && results[0][0];
          node.status(top ? { fill: 'green', shape: 'dot', text: `${top.label} (${(top.score * 100).toFixed(1)}%)` } : { fill: 'grey', shape: 'ring', text: 'no label' });
          send(msg);
          done();
        })
        .catch((err) => {
          node.status({ fill: 'red', shape: 'ring', text: (err.codeName || err.message).slice(0, 60) });
          done(err);
        });
      pending.add(call);
      call.finally(() => pending.delete(call));
    });

    // On redeploy, the messages being classified are answered (sent on, or their error reported) before the node
    // is gone; Node-RED waits for this (up to its nodeCloseTimeout, 15 s by default).
    node.on('close', (removed, closed) => {
      Promise.all([...pending]).then(() => {
        node.status({});
        closed();
      });
    });
  }

  RED.nodes.registerType('imgcls-classification', ImgclsClassificationNode);
};
