// transformers.js peer for the imgcls benchmark: image-classification in Node, offline.
//
//   node bench.mjs --models-root DIR/ --model-id efficientnet-lite0 --image name=path [--image ...]
//                  [--concurrency 1,4] [--warmup-s 1] [--duration-s 5] [--max-requests 5000]
//
// DIR/<model-id>/ holds config.json, preprocessor_config.json and onnx/model.onnx. Each level keeps
// `concurrency` classifier calls in flight (decode included: the pipeline reads the file) for a
// warm-up, then measures a window closed by time or by count, like benchmarks/loadgen.py.
// Prints one JSON line on stdout.
import { env, pipeline } from "@huggingface/transformers";

function parseArgs(argv) {
  const args = { image: [], concurrency: "1,4", "warmup-s": "1", "duration-s": "5", "max-requests": "5000" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (key === "image") args.image.push(argv[i + 1]);
    else args[key] = argv[i + 1];
  }
  return args;
}

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const rank = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

async function level(classifier, path, concurrency, warmupS, durationS, maxRequests) {
  const now = () => performance.now() / 1000;
  const opens = now() + warmupS;
  const closes = opens + durationS;
  let closedAt = null;
  let count = 0;
  const latencies = [];
  const stopping = () => {
    if (closedAt === null && now() >= closes) closedAt = closes;
    return closedAt !== null;
  };
  async function worker() {
    while (!stopping()) {
      const sent = now();
      await classifier(path, { top_k: 5 });
      const answered = now();
      if (closedAt !== null && answered > closedAt) continue;
      if (answered > closes) {
        closedAt = closes;
        continue;
      }
      if (answered < opens) continue;
      count += 1;
      if (sent >= opens) latencies.push((answered - sent) * 1000);
      if (count >= maxRequests) closedAt = answered;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Math.max((closedAt ?? now()) - opens, 1e-9);
  latencies.sort((a, b) => a - b);
  return {
    concurrency,
    requests: count,
    seconds,
    images_per_s: count / seconds,
    latency_ms: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99) },
  };
}

const args = parseArgs(process.argv.slice(2));
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = args["models-root"];
const loadStarted = performance.now();
const classifier = await pipeline("image-classification", args["model-id"], { dtype: "fp32", device: "cpu" });
const loadSeconds = (performance.now() - loadStarted) / 1000;
const results = [];
for (const spec of args.image) {
  const [name, path] = spec.split(/=(.*)/s);
  const first = await classifier(path, { top_k: 1 });
  for (const concurrency of args.concurrency.split(",").map(Number)) {
    const row = await level(
      classifier,
      path,
      concurrency,
      Number(args["warmup-s"]),
      Number(args["duration-s"]),
      Number(args["max-requests"]),
    );
    results.push({ image: name, top1: first[0].label, top1_score: first[0].score, ...row });
    console.error(`transformers.js ${name} c${concurrency}: ${row.images_per_s.toFixed(1)} img/s`);
  }
}
console.log(JSON.stringify({ version: env.version, node: process.version, load_s: loadSeconds, results }));
