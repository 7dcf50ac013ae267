'use strict';
// Answers of the Python client (imgcls.client) and pixels decoded by Pillow, for comparisons.

const { execFileSync } = require('child_process');
const { PYTHON, REPO } = require('./server');

function python(script, ...args) {
  return execFileSync(PYTHON, ['-c', script, ...args], { cwd: REPO, maxBuffer: 256 * 1024 * 1024 });
}

/** {file: [{label, score}]} from the Python client against target, for the image files given. */
function pythonLabels(target, files, { topK = 5, model = '' } = {}) {
  const script = [
    'import json, sys',
    'from imgcls.client import Client',
    'target, top_k, model, *files = sys.argv[1:]',
    'with Client(target) as client:',
    '    out = {f: [{"label": p.label, "score": p.score} for p in client.classify(f, top_k=int(top_k), model=model)] for f in files}',
    'print(json.dumps(out))',
  ].join('\n');
  return JSON.parse(python(script, target, String(topK), model, ...files).toString());
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

module.exports = { pythonLabels, decoded };
