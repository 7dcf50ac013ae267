'use strict';
// JavaScript values -> imgcls.v1.Input messages (as @grpc/proto-loader objects).

const PIXEL_FORMATS = { 1: 'PIXEL_FORMAT_GRAY8', 3: 'PIXEL_FORMAT_RGB8', 4: 'PIXEL_FORMAT_RGBA8' };
const FORMAT_NAMES = {
  rgb: 'PIXEL_FORMAT_RGB8',
  rgba: 'PIXEL_FORMAT_RGBA8',
  bgr: 'PIXEL_FORMAT_BGR8',
  gray: 'PIXEL_FORMAT_GRAY8',
};
const CHANNELS = { PIXEL_FORMAT_RGB8: 3, PIXEL_FORMAT_RGBA8: 4, PIXEL_FORMAT_BGR8: 3, PIXEL_FORMAT_GRAY8: 1 };
const URL = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

function isBytes(value) {
  return Buffer.isBuffer(value) || value instanceof Uint8Array || value instanceof ArrayBuffer;
}

function bytesOf(value) {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

// A bitmap's pixels as bytes: a Buffer, a typed byte array, or a plain array of integers 0-255 (a bitmap read
// back from JSON). Anything else is a TypeError that says what was given, not Buffer's own message.
function pixelBytes(data) {
  if (data instanceof Uint8ClampedArray) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (isBytes(data)) return bytesOf(data);
  if (Array.isArray(data)) {
    const bad = data.findIndex((v) => !Number.isInteger(v) || v < 0 || v > 255);
    if (bad >= 0) throw new TypeError(`bitmap data must hold bytes (integers 0-255); data[${bad}] is ${JSON.stringify(data[bad])}`);
    return Buffer.from(data);
  }
  const kind = data === null ? 'null' : Array.isArray(data) ? 'array' : typeof data === 'object' ? (data.constructor && data.constructor.name) || 'object' : typeof data;
  throw new TypeError(`bitmap data must be a Buffer, a Uint8Array, a Uint8ClampedArray or an array of bytes, got ${kind}`);
}

// A decoded bitmap {width, height, data[, format]}: the format from the bytes per pixel unless given.
function rawInput(bitmap) {
  const width = Number(bitmap.width);
  const height = Number(bitmap.height);
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new TypeError(`a bitmap needs positive integer width and height, got ${bitmap.width}x${bitmap.height}`);
  }
  const data = pixelBytes(bitmap.data);
  let format;
  if (bitmap.format !== undefined) {
    format = FORMAT_NAMES[String(bitmap.format).toLowerCase()];
    if (!format) throw new TypeError(`bitmap format must be rgb, rgba, bgr or gray, got ${bitmap.format}`);
    if (data.length !== width * height * CHANNELS[format]) {
      throw new TypeError(`a ${width}x${height} ${bitmap.format} bitmap needs ${width * height * CHANNELS[format]} bytes, got ${data.length}`);
    }
  } else {
    format = PIXEL_FORMATS[data.length / (width * height)];
    if (!format) {
      throw new TypeError(`a ${width}x${height} bitmap needs 1, 3 or 4 bytes a pixel, got ${data.length} bytes`);
    }
  }
  return { raw: { width, height, format, data } };
}

// A tensor {data, type, dim} (the FlowFuse node's), or {data, type, dims} (onnxruntime's, transformers.js').
function tensorInput(tensor) {
  const dims = (tensor.dim || tensor.dims).map(Number);
  const type = String(tensor.type || 'float32').toLowerCase();
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) throw new TypeError(`tensor dims must be non-negative integers, got [${dims}]`);
  const count = dims.reduce((a, b) => a * b, 1);
  let raw;
  if (type === 'float32') {
    const values = tensor.data instanceof Float32Array ? tensor.data : Float32Array.from(tensor.data);
    raw = Buffer.alloc(values.length * 4);
    for (let i = 0; i < values.length; i++) raw.writeFloatLE(values[i], i * 4);
    if (values.length !== count) throw new TypeError(`tensor of dims [${dims}] needs ${count} values, got ${values.length}`);
    return { tensor: { dims, dtype: 'DATA_TYPE_FLOAT32', raw_data: raw } };
  }
  if (type === 'float16') {
    // float16 values as their 16-bit patterns (Uint16Array, as onnxruntime holds them) or bytes.
    const bits = tensor.data instanceof Uint16Array ? tensor.data : Uint16Array.from(tensor.data);
    raw = Buffer.alloc(bits.length * 2);
    for (let i = 0; i < bits.length; i++) raw.writeUInt16LE(bits[i], i * 2);
    if (bits.length !== count) throw new TypeError(`tensor of dims [${dims}] needs ${count} values, got ${bits.length}`);
    return { tensor: { dims, dtype: 'DATA_TYPE_FLOAT16', raw_data: raw } };
  }
  throw new TypeError(`tensor type must be float32 or float16, got ${tensor.type}`);
}

/**
 * One value -> an imgcls.v1.Input: encoded image bytes (Buffer, Uint8Array, ArrayBuffer), a base64 string or
 * data: URL, a decoded bitmap {width, height, data[, format]}, a Jimp image ({bitmap: {...}}), or a tensor
 * {data, type, dim}. URLs are refused, never fetched.
 */
function toInput(value) {
  if (value === null || value === undefined) throw new TypeError(`cannot classify ${value}`);
  if (isBytes(value)) return { image: bytesOf(value) };
  if (typeof value === 'string') {
    if (URL.test(value)) throw new TypeError(`URLs are not fetched; download the image first and pass its bytes: ${value}`);
    if (value.length === 0) throw new TypeError('cannot classify an empty string');
    return { image_base64: value };
  }
  if (typeof value === 'object') {
    if (value.image !== undefined || value.image_base64 !== undefined || value.raw !== undefined || value.tensor !== undefined) {
      return value; // already an imgcls.v1.Input
    }
    if (value.bitmap && typeof value.bitmap === 'object') return rawInput(value.bitmap); // Jimp
    if (value.data !== undefined && (value.dim || value.dims)) return tensorInput(value);
    if (value.data !== undefined && value.width !== undefined && value.height !== undefined) return rawInput(value);
    if (value.type === 'Buffer' && Array.isArray(value.data)) return { image: Buffer.from(value.data) }; // a Buffer as JSON
  }
  const kind = Array.isArray(value) ? 'array' : typeof value === 'object' ? (value.constructor && value.constructor.name) || 'object' : typeof value;
  throw new TypeError(`cannot classify a ${kind}: pass a Buffer, a base64 string, a bitmap, a Jimp image or a tensor {data, type, dim}`);
}

// A plain JSON value -> google.protobuf.Value / Struct, as proto-loader objects.
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(value) };
  throw new TypeError(`preprocessor overrides hold JSON values only, got a ${typeof value}`);
}

function toStruct(object) {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    throw new TypeError('preprocessor overrides must be an object, e.g. {"size": {"height": 224, "width": 224}}');
  }
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'listValue': return (value.listValue.values || []).map(fromValue);
    case 'structValue': return fromStruct(value.structValue);
    default: return null;
  }
}

function fromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) out[key] = fromValue(value);
  return out;
}

module.exports = { toInput, toStruct, fromStruct };
