'use strict';
// Answers of the Python client (imgcls.client) and pixels decoded by Pillow, for comparisons.

const { execFileSync } = require('child_process');
const { PYTHON, REPO } = require('./server');

function python(script, ...args) {
  return execFileSync(PYTHON, ['-c', script, ...args], { cwd: REPO, maxBuffer: 256 * 1024 * 1024 });
}

/**
 * {file: [{label, score}]} from the Python client against target, for the image files given; options as the
 * Python client's (topK, threshold, functionToApply, preprocessorOverrides, model).
 */
function pythonLabels(target, files, { topK = 5, model = '', threshold = null, functionToApply = null, preprocessorOverrides = null, token = null } = {}) {
  const script = [
    'import json, sys',
    'from imgcls.client import Client',
    'target, options, *files = sys.argv[1:]',
    'o = json.loads(options)',
    'kw = dict(top_k=o["topK"], model=o["model"], threshold=o["threshold"], function_to_apply=o["functionToApply"], preprocessor_overrides=o["preprocessorOverrides"])',
    'with Client(target, token=o["token"]) as client:',
    '    out = {f: [{"label": p.label, "score": p.score} for p in client.classify(f, **kw)] for f in files}',
    'print(json.dumps(out))',
  ].join('\n');
  const options = JSON.stringify({ topK, model, threshold, functionToApply, preprocessorOverrides, token });
  return JSON.parse(python(script, target, options, ...files).toString());
}

/** [{label, score}] from the Python client for a float32 tensor of `dims` filled with `value`. */
function pythonTensorLabels(target, dims, value, { token = '' } = {}) {
  const script = [
    'import json, sys',
    'import numpy as np',
    'from imgcls.client import Client',
    'target, dims, value, token = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4] or None',
    'with Client(target, token=token) as client:',
    '    out = [{"label": p.label, "score": p.score} for p in client.classify(np.full(dims, value, np.float32))]',
    'print(json.dumps(out))',
  ].join('\n');
  return JSON.parse(python(script, target, JSON.stringify(dims), String(value), token).toString());
}

/** {width, height, data} of an image decoded to RGB (or RGBA) by Pillow. */
function decoded(file, mode = 'RGB') {
  const script = [
    'import sys',
    'from PIL import Image',
    'image = Image.open(sys.argv[1]).convert(sys.argv[2])',
    'sys.stdout.buffer.write(f"{image.width} {image.height}\\n".encode() + image.tobytes())',
  ].join('\n');
  const out = python(script, file, mode);
  const newline = out.indexOf(10);
  const [width, height] = out.subarray(0, newline).toString().split(' ').map(Number);
  return { width, height, data: out.subarray(newline + 1) };
}

module.exports = { pythonLabels, pythonTensorLabels, decoded };
