// Compiled (not run) by test/types.test.js: the declarations cover what the README shows.
import { Client, ClientError, status, type Prediction, type StreamResult } from '../..';

async function main(): Promise<void> {
  const client = new Client('127.0.0.1:50051', { timeoutMs: 5000, token: 'token' });
  const predictions: Prediction[] = await client.classify(Buffer.from(''), { topK: 3, threshold: 0.1, functionToApply: 'softmax' });
  const batch: Prediction[][] = await client.classifyBatch(['base64', { data: new Float32Array(3), type: 'float32', dim: [1, 3] }]);
  for await (const result of client.classifyStream([Buffer.from('')], { dropStale: true })) {
    const frame: StreamResult = result;
    if (!frame.ok) console.log(frame.codeName, frame.message);
  }
  try {
    await client.getModel('x');
  } catch (err) {
    if (err instanceof ClientError && err.code === status.NOT_FOUND) console.log(err.details);
  }
  console.log(predictions[0].label, batch.length, await client.health(), (await client.listModels())[0].name);
  client.close();
}

void main;
