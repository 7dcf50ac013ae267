// Types of imgcls-client (lib/index.js).

import type { ChannelOptions, status as GrpcStatus } from '@grpc/grpc-js';

/** A decoded bitmap: width x height pixels, 1 (gray), 3 (RGB) or 4 (RGBA) bytes each unless format says. */
export interface Bitmap {
  width: number;
  height: number;
  data: Buffer | Uint8Array | Uint8ClampedArray | ArrayBuffer | readonly number[]; // number[]: bytes 0-255, as JSON holds them
  format?: 'rgb' | 'rgba' | 'bgr' | 'gray';
}

/** A pre-processed tensor, as the FlowFuse node takes it ({data, type, dim}) or as onnxruntime holds it (dims). */
export interface TensorLike {
  data: Float32Array | Uint16Array | ArrayLike<number>;
  type?: 'float32' | 'float16';
  dim?: number[];
  dims?: number[];
}

/**
 * What can be classified: encoded image bytes, a base64 string or data: URL, a decoded bitmap, a Jimp image
 * ({bitmap}), a tensor, or an imgcls.v1.Input message as it is. URLs are refused, never fetched.
 */
export type ImageLike = Buffer | Uint8Array | ArrayBuffer | string | Bitmap | { bitmap: Bitmap } | TensorLike | Record<string, unknown>;

export type FunctionToApply = 'softmax' | 'sigmoid' | 'none';

export interface ClassifyOptions {
  /** Served model name; '' or undefined: the server's default. */
  model?: string;
  /** How many labels (undefined: the server's 5; 0: all). */
  topK?: number;
  /** Only labels scoring at least this. */
  threshold?: number;
  /** undefined: the model's default (softmax, or sigmoid for multi-label models). */
  functionToApply?: FunctionToApply | null;
  /** Merged over the model's preprocessor_config.json, for this request (keys its image processor reads). */
  preprocessorOverrides?: Record<string, unknown>;
  requestId?: string;
  /** Deadline of the call in milliseconds (null: none); default: the client's timeoutMs. */
  timeoutMs?: number | null;
}

export interface StreamOptions extends ClassifyOptions {
  /** Answer frames that went stale while the server was busy as skipped, instead of classifying them. */
  dropStale?: boolean;
}

export interface Prediction {
  label: string;
  score: number;
  /** The class index in the model's outputs (config.json's id2label key). */
  index: number;
}

export interface StreamResult {
  requestId: string;
  model: string;
  /** One list of predictions per input of the frame. */
  predictions: Prediction[][];
  /** The frame's gRPC status code (0: OK) and its name and message. */
  code: number;
  codeName: string;
  message: string;
  skipped: boolean;
  ok: boolean;
}

export interface ModelInfo {
  name: string;
  /** Preprocessing as plain JSON (the resolved preprocessor config). */
  preprocessing: Record<string, unknown>;
  [field: string]: unknown;
}

export interface ClientOptions {
  /** Deadline of unary calls in milliseconds (default 60000; null: none). */
  timeoutMs?: number | null;
  /** Bearer token, sent as `authorization: Bearer <token>`. */
  token?: string | null;
  /** Use TLS with the system's roots (implied by rootCertificates or clientCert). */
  tls?: boolean;
  /** PEM of the CA(s) to trust. */
  rootCertificates?: Buffer | string;
  /** PEM certificate and key for mTLS. */
  clientCert?: { cert: Buffer | string; key: Buffer | string };
  /** Largest message sent or received (default 64 MiB, the server's default). */
  maxMessageBytes?: number;
  /** Calls made while the server cannot be reached wait for it (until their deadline) instead of failing UNAVAILABLE. */
  waitForReady?: boolean;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: ChannelOptions;
}

/** A call failed: code is the gRPC status code, codeName its name, details the server's message. */
export class ClientError extends Error {
  constructor(code: number, details: string);
  readonly code: number;
  readonly codeName: string;
  readonly details: string;
}

export class Client {
  /** target: host:port or any gRPC target (dns:///name:50051). */
  constructor(target?: string, options?: ClientOptions);
  readonly target: string;
  close(): void;
  classify(image: ImageLike, options?: ClassifyOptions): Promise<Prediction[]>;
  classifyBatch(images: ImageLike[], options?: ClassifyOptions): Promise<Prediction[][]>;
  /** A ClassifyRequest message as it is (see buildRequest); the ClassifyResponse message. */
  classifyRequest(request: Record<string, unknown>, options?: { timeoutMs?: number | null }): Promise<any>;
  /** One result per frame, in order; a frame that cannot be sent ends the stream (thrown after the ones before). */
  classifyStream(frames: Iterable<ImageLike> | AsyncIterable<ImageLike>, options?: StreamOptions): AsyncGenerator<StreamResult, void, undefined>;
  listModels(options?: { timeoutMs?: number | null }): Promise<ModelInfo[]>;
  getModel(name?: string, options?: { timeoutMs?: number | null }): Promise<ModelInfo>;
  /** grpc.health.v1 status: 'SERVING', 'NOT_SERVING', ... */
  health(service?: string, options?: { timeoutMs?: number | null }): Promise<string>;
  waitForReady(timeoutMs?: number): Promise<void>;
}

/** The ClassifyRequest message for images and options; throws TypeError for what cannot be sent. */
export function buildRequest(images: ImageLike[], options?: ClassifyOptions): Record<string, unknown>;
/** One value as an imgcls.v1.Input message; throws TypeError for what cannot be sent. */
export function toInput(value: ImageLike): Record<string, unknown>;
export const status: typeof GrpcStatus;
/** Where the shipped .proto files are (imgcls/v1/classifier.proto, grpc/health/v1/health.proto). */
export const PROTO_DIR: string;
export const DEFAULT_TARGET: string;
